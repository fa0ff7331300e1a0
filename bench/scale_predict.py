"""predict over many files: clfapp's streaming predict against fastai's learn.predict loop and
get_preds, side by side; then a predict killed halfway (SIGKILL) and resumed.

    python bench/scale_make.py && python bench/scale_fit.py     # the images, a trained run
    python bench/scale_predict.py --run /tmp/clfapp_scale_fit_XXXX/runs/scale \
        [--data /tmp/clfapp_scale/small] [--sample 10000] [--predict-sample 300]

Every figure is images/s end to end from the file list (decode, resize, model, output), with an
empty image cache (CLFAPP_CACHE in a new folder: nothing was decoded before). fastai runs the
same model (the run's bundle) in a Learner whose DataLoaders decode and resize with fastai's
own item transforms (Resize squish at the model's size), as a plain fastai script would; its
learn.predict is timed on --predict-sample files (it builds a DataLoader per image).
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_common import CLFAPP, PYTHON, machine_note, run, say, table  # noqa: E402

FASTAI = r"""
import sys, time, torch
from pathlib import Path
from fastai.vision.all import (DataBlock, ImageBlock, CategoryBlock, Resize, ResizeMethod,
                               Normalize, Learner, CrossEntropyLossFlat, parent_label)
from clfapp.infer import bundle
run, listing, n_predict, workers = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
files = [Path(l) for l in open(listing).read().split("\n") if l]
model, meta = bundle.load(run)
block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=meta.classes)), get_y=parent_label,
                  item_tfms=Resize(meta.size, method=ResizeMethod.Squish),
                  batch_tfms=Normalize.from_stats(meta.mean, meta.std))
dls = block.dataloaders(files[:128], bs=64, num_workers=0)
learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
learn.predict(files[0])  # warm-up
t = time.perf_counter()
for f in files[:n_predict]:
    learn.predict(f)
dt = time.perf_counter() - t
print(f"PREDICT {n_predict} {dt:.2f}", flush=True)
for w in sorted({0, workers}):
    dl = learn.dls.test_dl(files, bs=64, num_workers=w)
    t = time.perf_counter()
    probs, _ = learn.get_preds(dl=dl)
    dt = time.perf_counter() - t
    print(f"GETPREDS {w} {len(probs)} {dt:.2f}", flush=True)
"""


def rate(text: str) -> tuple[int, float, float]:
    m = re.search(r"predictions written to \S+ \(([\d.]+) s, (\d+) images/s for (\d+) images\)", text)
    if not m:
        raise SystemExit("no throughput line in:\n" + text[-3000:])
    return int(m.group(3)), float(m.group(1)), float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default="/tmp/clfapp_scale/small")
    ap.add_argument("--sample", type=int, default=10000, help="files for workers=0 and get_preds")
    ap.add_argument("--predict-sample", type=int, default=300, help="files for learn.predict")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N files (0: all)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clfapp_scale_predict_"))
    env = {"CLFAPP_CACHE": str(work / "empty-cache")}
    files = sorted(str(p) for p in Path(a.data).rglob("*.jpg"))
    files = files[:a.limit] if a.limit else files
    rng = __import__("random").Random(0)
    sample = rng.sample(files, min(a.sample, len(files)))
    (work / "all.txt").write_text("\n".join(files) + "\n")
    (work / "sample.txt").write_text("\n".join(sample) + "\n")
    say(f"{len(files)} files in {a.data}; sample {len(sample)}; work folder {work}; {machine_note()}")
    rows = []

    m = run([CLFAPP, "predict", a.run, str(work / "all.txt"), "--workers", str(a.workers),
             "--out", str(work / "all.csv")], work / "all.log", env)
    n, s, r = rate(m.output)
    rows.append({"what": f"clfapp predict, --workers {a.workers}", "images": n, "seconds": f"{s:.0f}",
                 "images/s": f"{r:.0f}", "peak RSS tree (MB)": f"{m.peak_rss_mb:.0f}"})
    say(str(rows[-1]))
    m = run([CLFAPP, "predict", a.run, str(work / "sample.txt"), "--workers", "0",
             "--out", str(work / "sample0.csv")], work / "sample0.log", env)
    n, s, r = rate(m.output)
    rows.append({"what": "clfapp predict, --workers 0", "images": n, "seconds": f"{s:.0f}",
                 "images/s": f"{r:.0f}", "peak RSS tree (MB)": f"{m.peak_rss_mb:.0f}"})
    say(str(rows[-1]))
    m = run([PYTHON, "-c", FASTAI, a.run, str(work / "sample.txt"), str(a.predict_sample),
             str(a.workers)], work / "fastai.log", env)
    p = re.search(r"PREDICT (\d+) ([\d.]+)", m.output)
    if not p:
        raise SystemExit(m.output[-3000:])
    rows.append({"what": "fastai learn.predict loop", "images": p.group(1), "seconds": f"{float(p.group(2)):.0f}",
                 "images/s": f"{int(p.group(1)) / float(p.group(2)):.0f}", "peak RSS tree (MB)": "-"})
    for w, n, s in re.findall(r"GETPREDS (\d+) (\d+) ([\d.]+)", m.output):
        rows.append({"what": f"fastai get_preds, num_workers {w}", "images": n, "seconds": f"{float(s):.0f}",
                     "images/s": f"{int(n) / float(s):.0f}", "peak RSS tree (MB)": "-"})
    rows[-1]["peak RSS tree (MB)"] = f"{m.peak_rss_mb:.0f} (whole fastai script)"
    say("\n" + table(rows))

    # killed halfway (SIGKILL: no handler runs), then resumed
    out = work / "killed.csv"
    part = out.with_name(out.name + ".part")
    half = len(files) // 2

    def halfway() -> bool:
        try:
            with open(part, "rb") as f:
                return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b"")) > half
        except OSError:
            return False
    first = run([CLFAPP, "predict", a.run, str(work / "all.txt"), "--workers", str(a.workers),
                 "--out", str(out)], work / "killed.log", env, kill_when=halfway)
    kept = sum(1 for _ in open(part)) - 1
    second = run([CLFAPP, "predict", a.run, str(work / "all.txt"), "--workers", str(a.workers),
                  "--out", str(out), "--resume"], work / "resumed.log", env)
    import pandas as pd
    df = pd.read_csv(out)
    ref = pd.read_csv(work / "all.csv")
    merged = df.merge(ref, on="path", suffixes=("", "_ref"))
    say(f"\nkilled (SIGKILL, exit {first.rc}) after {first.seconds:.0f} s with {kept} rows in {part.name}; "
        f"--resume: exit {second.rc}, {second.seconds:.0f} s, "
        f"{re.search(r'resuming .*', second.output).group(0) if 'resuming' in second.output else '?'}")
    say(f"output: {len(df)} rows for {len(files)} files, {df['path'].nunique()} distinct, "
        f"every file once: {len(df) == len(files) == df['path'].nunique() and set(df['path']) == set(files)}; "
        f"labels equal to the uninterrupted run's: {(merged['label'] == merged['label_ref']).mean():.4f}; "
        f"{machine_note()}")


if __name__ == "__main__":
    main()
