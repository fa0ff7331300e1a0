"""The cifar10 study's augmentation table: one short training per setting, same everything else.

    python bench/augment_compare.py [--epochs 3] [--size 32] [--arch tf_efficientnet_lite0]
                                    [--per-class 0] [--data ../shared/datasets/cifar10_png]

Each row is `clfapp fit cifar10` with the same split (data.seed 42), seed, epochs, arch and
size, one-cycle schedule, and only the augmentation changed through `--set aug.*` keys, from a
baseline with every aug_transforms knob off. Evaluation set: the validation split, 20% of the
train/ folder chosen by clfapp's stable hash rule (the test/ folder is the run's held-out test
split; its accuracy is the run's headline in metrics.json, printed as "test acc"). Accuracy is the last epoch's
(results.csv), so no setting gains from best-epoch picking; "best" is the kept epoch's.

clfapp has no translation or shear key (config.AugConfig: flip, flip_vert, max_rotate,
min_zoom/max_zoom, max_warp, min_scale, lighting, mixup, cutmix). The closest knobs stand in,
and the rows say so: translation ~ random-resized crop keeping >= 80% of the area (a random
window position: shifts of up to ~10%, with slight scaling); shear ~ fastai's perspective warp
(max_warp 0.3), which skews like a shear but is not one.
--per-class N copies N train images per class (N/4 test) to a temporary folder first (quick checks).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OFF = {"flip": "false", "flip_vert": "false", "max_rotate": "0", "min_zoom": "1", "max_zoom": "1",
       "max_warp": "0", "max_lighting": "0", "min_scale": "1", "mixup": "0", "cutmix": "0"}
SETTINGS = {   # label → the aug keys changed from OFF
    "none": {},
    "rotation": {"max_rotate": "15", "p_affine": "1"},
    "translation~rrc(0.8)": {"min_scale": "0.8"},
    "shear~warp(0.3)": {"max_warp": "0.3", "p_affine": "1"},
    "flip": {"flip": "true"},
    "zoom": {"max_zoom": "1.2", "p_affine": "1"},
    "mixup+rotation": {"mixup": "0.5", "max_rotate": "15", "p_affine": "1"},
}


def subset(src: Path, dst: Path, n: int) -> Path:
    for split in ("train", "test"):
        for c in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / c.name).mkdir(parents=True)
            for p in sorted(c.iterdir())[: n if split == "train" else max(2, n // 4)]:
                shutil.copy(p, dst / split / c.name / p.name)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "cifar10_png"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--arch", default="tf_efficientnet_lite0")
    ap.add_argument("--no-pretrained", action="store_true", help="train the arch from scratch")
    ap.add_argument("--lr", default="3e-3")
    ap.add_argument("--per-class", type=int, default=0, help="use N train images per class (0 = all)")
    ap.add_argument("--only", default="", help="comma-separated setting labels")
    args = ap.parse_args()
    if not Path(args.data, "train").is_dir():
        sys.exit(f"{args.data}/train not found: cifar10_png (train/ + test/) is needed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = {k: v for k, v in SETTINGS.items() if not args.only or k in args.only.split(",")}
    print(f"cifar10 augmentations: {args.arch}{' (scratch)' if args.no_pretrained else ''} at "
          f"{args.size} px, {args.epochs} epochs one-cycle, lr {args.lr}; eval = valid split (20% of train/)")
    print(f"{'setting':22s} {'acc last':>8s} {'acc best':>8s} {'test acc':>8s} {'seconds':>8s}  --set aug.*")
    with tempfile.TemporaryDirectory(prefix="augcmp-") as tmp:
        tmp = Path(tmp)
        data = subset(Path(args.data), tmp / "data", args.per_class) if args.per_class else Path(args.data).resolve()
        for label, keys in settings.items():
            sets = {**OFF, **keys}
            cmd = [sys.executable, "-m", "clfapp", "fit", "cifar10", "--data", str(data), "--name", label,
                   "--epochs", str(args.epochs), "--size", str(args.size), "--arch", args.arch,
                   "--lr", args.lr, "--seed", "42", "--split-seed", "42",
                   "--set", "train.freeze_epochs=0", "--set", "train.schedule=one_cycle"]
            if args.no_pretrained:
                cmd.append("--no-pretrained")
            cmd += [x for k, v in sets.items() for x in ("--set", f"aug.{k}={v}")]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            changed = " ".join(f"{k}={v}" for k, v in keys.items()) or "(all off)"
            if out.returncode:
                print(f"{label:22s} failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
                continue
            run = tmp / "runs" / label
            acc = pd.read_csv(run / "results.csv")["accuracy"]
            m = json.loads((run / "metrics.json").read_text())
            test = m["accuracy"] if m.get("split") == "test" else None   # the held-out test/ folder
            test_s = f"{test:8.4f}" if isinstance(test, float) else f"{'-':>8s}"
            print(f"{label:22s} {acc.iloc[-1]:8.4f} {acc.max():8.4f} {test_s} {seconds:8.1f}  {changed}", flush=True)


if __name__ == "__main__":
    main()
