"""Near-duplicates: which signature and which rule find planted copies.

    python bench/near_duplicates.py [--copies 300] [--work /tmp/clfapp-bench-dups] [--no-features] [--seed 0]

The originals: plant seedlings train/ + valid/ (150 px JPEG; train/ holds two exact-duplicate
groups) and CIFAR-10 test/ (32 px PNG), read from ../shared/datasets and never copied into the
repository. `--copies` of them (half from each data set, seeded) are saved again under --work,
each resized by a random factor in [0.9, 1.1], cropped by 5 % of each side (at a random place)
and saved as JPEG quality 50.

The truth: each copy with its original, plus the exact duplicates (`data check`'s hash). Recall:
truth pairs that end in one group (all, and the planted ones of each data set). Precision: of
the found pairs that involve a planted copy or an exact duplicate, those that belong together.
Pairs of two originals are counted apart ("data's own"): plant seedlings holds real
near-duplicates (the same seedling photographed twice, often across train/valid), which no
truth list names.

Signatures: clfapp's thumbnail (infer/near_duplicates.py), tf_efficientnet_lite0 features pooled
over the image (128 px; cached under --work, shared with bench/outliers.py; --no-features skips
them), ImageHash's pHash (64 bits as +-1: cosine = 1 - 2 Hamming/64) when installed. Rules: a
global cosine threshold, or clfapp's (CSLS margin, floor, absolute; near_duplicates.py).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def plant(originals: list[str], n: int, work: Path, seed: int = 0) -> list[tuple[str, str]]:
    """Save `n` altered copies (half of each dataset); (original, copy) pairs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    plants = [p for p in originals if "plant_seedlings" in p]
    cifar = [p for p in originals if "cifar10" in p]
    chosen = list(rng.choice(plants, n // 2, replace=False)) + list(rng.choice(cifar, n - n // 2, replace=False))
    out = work / ("copies" if seed == 0 else f"copies-seed{seed}")
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for k, src in enumerate(chosen):
        dst = out / f"copy{k:04d}.jpg"
        with Image.open(src) as img:  # the same draws whether the copy is made now or was before
            img = img.convert("RGB")
            f = rng.uniform(0.9, 1.1)
            w, h = max(8, round(img.width * f)), max(8, round(img.height * f))
            cw, ch = round(0.05 * w), round(0.05 * h)
            x0, y0 = int(rng.integers(0, cw + 1)), int(rng.integers(0, ch + 1))
            if not dst.exists():
                img = img.resize((w, h), Image.Resampling.BICUBIC)
                img.crop((x0, y0, x0 + w - cw, y0 + h - ch)).save(dst, quality=50)
        pairs.append((str(src), str(dst)))
    return pairs


def truth_of(planted, exact) -> dict:
    """path → truth group id."""
    group, n = {}, 0
    for members in [list(p) for p in planted] + exact:
        ids = {group[m] for m in members if m in group}
        g = min(ids) if ids else n
        n += 1
        for other in ids - {g}:  # merge
            for k, v in list(group.items()):
                if v == other:
                    group[k] = g
        for m in members:
            group[m] = g
    return group


def cached_features(paths, work: Path, size: int):
    """Unit-length features of `paths` (all readable here), kept per path in
    WORK/features-SIZE.npz across runs (and benches): only paths not in it are computed.
    Returns (features, seconds spent computing)."""
    from clfapp.infer.features import image_features

    f = work / f"features-{size}.npz"
    known: dict = {}
    if f.exists():
        z = np.load(f, allow_pickle=False)
        known = dict(zip(z["paths"].tolist(), z["x"]))
    todo = [p for p in dict.fromkeys(paths) if p not in known]
    secs = 0.0
    if todo:
        t0 = time.perf_counter()
        x, kept = image_features(todo, size=size)
        secs = time.perf_counter() - t0
        known.update({todo[i]: row for i, row in zip(kept, x)})
        np.savez(f, paths=np.array(list(known)), x=np.stack(list(known.values())))
    return np.stack([known[p] for p in paths]), secs



def evaluate(paths, exact, x, truth, planted, rule) -> tuple:
    """(recall, recall plants, recall cifar, precision, found pairs judged, data's own pairs)."""
    from clfapp.infer import near_duplicates as nd

    r = nd.find(paths, exact, features=x, progress=False, **rule)
    g = r.group_of()
    together = lambda a, b: a in g and g.get(a) == g.get(b)  # noqa: E731
    want = set()
    by_truth: dict = {}
    for p, t in truth.items():
        by_truth.setdefault(t, []).append(p)
    for members in by_truth.values():
        want |= {(a, b) for i, a in enumerate(members) for b in members[i + 1:]}
    recall = sum(together(a, b) for a, b in want) / len(want)
    half = len(planted) // 2
    rec_p = np.mean([together(o, c) for o, c in planted[:half]])
    rec_c = np.mean([together(o, c) for o, c in planted[half:]])
    judged = [p for p in r.pairs if p.a in truth or p.b in truth]
    good = sum(truth.get(p.a, -1) == truth.get(p.b, -2) for p in judged)
    return recall, rec_p, rec_c, good / max(1, len(judged)), len(judged), len(r.pairs) - len(judged)


def phash_bits(paths) -> tuple[np.ndarray, float]:
    """pHash of each path as unit-length +-1 rows (cosine = 1 - 2 Hamming / 64), and seconds."""
    import imagehash
    from PIL import Image

    t0 = time.perf_counter()
    bits = []
    for p in paths:
        with Image.open(p) as img:
            bits.append(imagehash.phash(img.convert("RGB")).hash.flatten())
    x = (np.array(bits, dtype=np.float32) * 2 - 1) / 8.0
    return x, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=300)
    ap.add_argument("--work", default="/tmp/clfapp-bench-dups")
    ap.add_argument("--no-features", action="store_true", help="skip the pretrained features")
    ap.add_argument("--seed", type=int, default=0, help="which copies are planted, and how altered")
    args = ap.parse_args()
    if not DATASETS.is_dir():
        sys.exit(f"{DATASETS} not found: this bench needs the shared datasets")
    from clfapp.data.images import find_images
    from clfapp.infer import near_duplicates as nd
    from clfapp.infer.features import FEATURE_SIZE
    from clfapp.report.progress import plain_lines_off_terminal

    plain_lines_off_terminal()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    originals = [str(p) for p in find_images(DATASETS / "plant_seedlings")] + \
                [str(p) for p in find_images(DATASETS / "cifar10_png" / "test")]
    planted = plant(originals, args.copies, work, args.seed)
    paths = originals + [c for _, c in planted]
    t0 = time.perf_counter()
    exact = nd.exact_groups(paths)
    t_hash = time.perf_counter() - t0
    truth = truth_of(planted, exact)
    embed = [paths[i] for i in nd.to_embed(paths, exact)]
    print(f"{len(originals)} originals + {len(planted)} planted copies; {len(exact)} exact-duplicate "
          f"group(s) by data check's hash ({t_hash:.1f} s)")

    t0 = time.perf_counter()
    thumbs, kept = nd.signatures(embed)
    t_thumb = time.perf_counter() - t0
    assert len(kept) == len(embed)
    sigs = {"thumbnail": (thumbs, t_thumb)}
    if not args.no_features:
        sigs["lite0 features"] = cached_features(embed, work, FEATURE_SIZE)
    try:
        sigs["pHash"] = phash_bits(embed)
    except ImportError:
        print("pHash: ImageHash not installed (pip install imagehash): skipped")
    clfapp_rule = dict(k=nd.K, margin=nd.MARGIN, floor=nd.FLOOR, absolute=nd.ABSOLUTE)
    never = dict(margin=9.0)
    rules = {"thumbnail": [("clfapp rule", clfapp_rule)] + [(f"cos >= {t}", dict(never, absolute=t)) for t in (0.85, 0.90, 0.95)],
             "lite0 features": [("clfapp rule", clfapp_rule)] + [(f"cos >= {t}", dict(never, absolute=t)) for t in (0.80, 0.90, 0.95)],
             "pHash": [("clfapp rule", clfapp_rule)] + [(f"hamming <= {h}", dict(never, absolute=1 - 2 * h / 64 - 1e-6)) for h in (8, 10, 12)]}
    print(f"\n{'signature':<16}{'rule':<16}{'recall':>7}{'plants':>8}{'cifar':>7}{'precision':>10}"
          f"{'judged':>8}{'data own':>9}{'seconds':>9}")
    for name, (x, secs) in sigs.items():
        for label, rule in rules[name]:
            t0 = time.perf_counter()
            rec, rp, rc, prec, judged, own = evaluate(paths, exact, x, truth, planted, rule)
            t = secs + time.perf_counter() - t0
            print(f"{name:<16}{label:<16}{rec:>7.3f}{rp:>8.3f}{rc:>7.3f}{prec:>10.3f}{judged:>8}{own:>9}{t:>9.1f}")
    print(f"(truth: {len(planted)} planted pairs + the pairs within {len(exact)} exact group(s); seconds: "
          "signatures (features: 0 when cached) + search)")


if __name__ == "__main__":
    main()
