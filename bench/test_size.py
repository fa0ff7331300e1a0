"""Which test size pays: a run's validation figure with images resized to several sizes.

    python bench/test_size.py runs/plants-1 [runs/idl-1 ...] [--scales 1,1.25,1.5]

For each run, its saved bundle on its own validation split (splits.csv), with the model's TTA,
at the training size (data.size), at the automatic test size (infer/test_size.py: data.size
times the mean magnification of training's crops and zoom, FixRes) and at data.size times
each of --scales. Prints accuracy (single-label) or micro-F1 at the threshold tuned at that
size (multi-label, as fit tunes it), and the seconds each size took (decoding included), so a
size's price stands next to its gain.
"""
import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--scales", default="1.25,1.5", help="multiples of data.size to try too")
    args = ap.parse_args()

    import numpy as np

    from clfapp import config
    from clfapp.data import images
    from clfapp.infer import evaluate, thresholds
    from clfapp.infer.predict import Predictor
    from clfapp.infer.test_size import auto_test_size, magnification

    for run in map(Path, args.runs):
        if not (run / "model").is_dir():
            sys.exit(f"{run}: no model/ (a finished run folder is needed)")
        cfg = config.from_file(run / "config.toml")
        p = Predictor(run)
        items, _ = evaluate.labelled_items(run)
        size, auto = p.meta.size, auto_test_size(p.meta.size, cfg.aug)
        sizes = sorted({size, auto} | {int(round(size * float(s) / 8)) * 8 for s in args.scales.split(",")})
        print(f"\n{run} ({len(items)} validation images, trained at {size} px, crops and zoom "
              f"x{magnification(cfg.aug):.2f}: auto test size {auto} px, TTA {p.meta.tta})")
        for s in sizes:
            t0 = time.perf_counter()
            pixels, kept = images.read_many(items["path"].tolist(), s, p.meta.resize, progress=False)
            probs = p.probabilities_of(pixels, tta=p.meta.tta)
            m, y = evaluate.score(probs, items.iloc[kept], p.meta)
            if p.meta.multi_label:
                key, value = "f1_micro (tuned)", thresholds.search(probs, y, "f1_micro").score
            else:
                key, value = "accuracy", m["accuracy"]
            mark = ", ".join(w for w, at in (("trained", size), ("auto", auto)) if s == at)
            mark = f"  <- {mark}" if mark else ""
            print(f"  {s:4d} px  {key} {value:.4f}  {time.perf_counter() - t0:6.1f} s{mark}", flush=True)


if __name__ == "__main__":
    main()
