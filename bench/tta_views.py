"""Which test-time views pay: a run's validation figure with each set of mirrored views.

    python bench/tta_views.py runs/plants-1 [runs/idl-1 ...]

For each run, its saved bundle on its own validation split (splits.csv), the images decoded
once, with the probabilities averaged over:

- none: the image alone;
- each mirror: the image and each mirror it was trained with, one at a time (clfapp's TTA
  before the dihedral views);
- mirror combinations: every combination of those mirrors (with both flips: the 180 degree
  turn too, 4 views);
- dihedral: all 8 turns and mirrors of the square (clfapp's TTA), only for models trained
  with flip_vert (fastai's Dihedral augmentation, which also transposes).

Prints accuracy (single-label) or micro-F1 at the run's tuned thresholds (multi-label), and
the seconds each set took, so a view's price stands next to its gain.
"""
import argparse
import sys
import time
from pathlib import Path


def views(flips: list[str]) -> dict[str, list[tuple]]:
    """Set name -> its views, each a tuple of mirrors applied in turn."""
    from clfapp.infer.spec import tta_views
    flips_only = [f for f in flips if f != "transpose"]
    out = {"none": [()]}
    if flips_only:
        out["each mirror"] = [()] + [(f,) for f in flips_only]
        out["mirror combinations"] = tta_views(flips_only)
    if "transpose" in flips:
        out["dihedral (clfapp)"] = tta_views(flips)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()

    import numpy as np
    import torch

    from clfapp.data import images
    from clfapp.infer import evaluate
    from clfapp.infer.predict import Predictor, _mirrored

    for run in map(Path, args.runs):
        if not (run / "model").is_dir():
            sys.exit(f"{run}: no model/ (a finished run folder is needed)")
        p = Predictor(run)
        items, _ = evaluate.labelled_items(run)
        pixels = np.stack([images.read_image(f, p.meta.size, p.meta.resize) for f in items["path"]])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        print(f"\n{run} ({len(items)} validation images, mirrors trained: {p.tta_flips or 'none'})")
        for name, vs in views(p.tta_flips).items():
            t0 = time.perf_counter()
            probs = 0
            for v in vs:
                probs = probs + np.concatenate([p.forward(_mirrored(x[i:i + 64], v)).numpy()
                                                for i in range(0, len(x), 64)])
            m, _ = evaluate.score(probs / len(vs), items, p.meta)
            key = "f1_micro" if p.meta.multi_label else "accuracy"
            print(f"  {name:20s} {len(vs)} views  {key} {m[key]:.4f}  {time.perf_counter() - t0:6.1f} s")


if __name__ == "__main__":
    main()
