"""`clfapp fit FOLDER` (settings chosen for the data) against the plants recipe's settings on
the same small folders of real photos.

    python bench/small_folders.py [--out /tmp/clfapp-small-folders] [--only NAME]

Builds three folders (never committed; under --out) from ../shared/datasets, each 100-300
images of 2-3 classes re-saved at varied sizes and aspect ratios (so the size rule has work to
do), then for each runs `clfapp fit FOLDER` and `clfapp fit plants --data FOLDER` and prints
per run: best and last validation accuracy (the last epoch's minus the best's says how much a
run overfit past its best), the final figure (metrics.json: the kept weights at the model's
test size, with its TTA: what the user gets), the epochs, and wall seconds.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from runner import timed

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _save_varied(src: Path, dst: Path, rng, lo: int, hi: int) -> None:
    """Re-save `src` with its short side drawn from [lo, hi] and an aspect ratio in [0.75, 1.33]."""
    im = Image.open(src).convert("RGB")
    side = int(rng.integers(lo, hi + 1))
    aspect = float(rng.uniform(0.75, 1.33))
    w, h = (int(side * aspect), side) if aspect >= 1 else (side, int(side / aspect))
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.resize((w, h), Image.BICUBIC).save(dst, quality=90)


def build(out: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    folders = {}
    # plant seedlings: 3 species, 100 images each, 100-400 px
    f = out / "seedlings3"
    if not f.exists():
        for cls in ("Charlock", "Maize", "Sugar_beet"):
            files = sorted((SHARED / "plant_seedlings" / "train" / cls).iterdir())[:100]
            for p in files:
                _save_varied(p, f / cls / (p.stem + ".jpg"), rng, 100, 400)
    folders["seedlings3"] = f
    # CIFAR-10: cat vs dog, 120 each, upscaled from 32 px to 48-128 px (hard: tiny originals)
    f = out / "catdog"
    if not f.exists():
        for cls in ("cat", "dog"):
            files = sorted((SHARED / "cifar10_png" / "train" / cls).iterdir())[:120]
            for p in files:
                _save_varied(p, f / cls / (p.stem + ".jpg"), rng, 48, 128)
    folders["catdog"] = f
    # the multi-label photos: images carrying exactly one of car / flower / sea, 80 each
    f = out / "photos3"
    if not f.exists():
        df = pd.read_csv(SHARED / "idl_multilabel" / "labels.csv")
        sets = df["labels"].fillna("").str.split()
        for cls in ("car", "flower", "sea"):
            only = df[sets.apply(lambda s, c=cls: c in s and not ({"car", "flower", "sea"} - {c}) & set(s))]
            for name in only["fname"].head(80):
                _save_varied(SHARED / "idl_multilabel" / "images" / name,
                             f / cls / (Path(name).stem + ".jpg"), rng, 96, 320)
    folders["photos3"] = f
    return folders


def run(args: list[str], name: str, env: dict) -> dict:
    seconds, _ = timed([sys.executable, "-m", "clfapp", "fit", *args, "--name", name], env)
    df = pd.read_csv(Path("runs") / name / "results.csv")
    final = json.loads((Path("runs") / name / "metrics.json").read_text())["accuracy"]
    acc = df["accuracy"]
    return dict(best=round(float(acc.max()), 4), last=round(float(acc.iloc[-1]), 4),
                last_minus_best=round(float(acc.iloc[-1] - acc.max()), 4),
                final=round(float(final), 4), epochs=len(df), seconds=round(seconds, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/clfapp-small-folders")
    ap.add_argument("--only")
    ap.add_argument("--auto-only", action="store_true", help="only the `fit FOLDER` side")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="a config value for both sides, e.g. train.ema=0.999 (repeatable)")
    ap.add_argument("--tag", default="", help="added to the run folder names")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the shared datasets are needed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stamp = int(time.time())
    rows = []
    for name, folder in build(Path(args.out)).items():
        if args.only and name != args.only:
            continue
        n = sum(1 for _ in folder.rglob("*.jpg"))
        for how, cli_args in (("fit FOLDER", [str(folder)]),
                              ("plants recipe", ["plants", "--data", str(folder)])):
            if args.auto_only and how != "fit FOLDER":
                continue
            cli_args += [a for kv in args.sets for a in ("--set", kv)]
            side = "auto" if how == "fit FOLDER" else "plants"
            r = run(cli_args, f"bench-{name}-{side}{args.tag}-{stamp}", env)
            rows.append(dict(folder=name, images=n, how=how, sets=" ".join(args.sets), **r))
            print(rows[-1], flush=True)
    print("\n" + pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
