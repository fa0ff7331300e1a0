"""Every study recipe end to end on real images, epochs overridden to 1: does each one run?

    python bench/recipes_smoke.py [--per-class 20] [--size 64] [--only wood,idl]

plants, idl and cifar10 train on subsets (`--per-class` images per class, idl `--per-class`
x 14 rows) of ../shared/datasets; wood and scenes, whose data is not staged, on stand-ins made
from plant seedling photos: wood = one flat folder of them renamed `CCnnnn.jpg` (CC = the
class's two-digit number, the recipe's `name:^(\\d{2})` labels), scenes = 8 of the species'
folders. Everything is written under a temporary folder (the runs too) and removed after.

Overrides, printed in each row: --epochs 1 (and train.freeze_epochs=min(1, recipe's), one
SGDR cycle), --set data.size=SIZE (cifar10 keeps 32), and model.arch=tf_efficientnet_lite0
where the recipe's arch has no pretrained weights on an offline machine (--online keeps it).
One row per recipe: recipe, dataset used, exit code, seconds, headline metric, overrides.
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
SHARED = REPO.parent / "shared" / "datasets"
OFFLINE_ARCHS = {"tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"}
RECIPES = ("wood", "idl", "plants", "scenes", "cifar10")


def _images(folder: Path, n: int) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def _copy_folders(src: Path, dst: Path, n: int, classes: list[str] | None = None) -> Path:
    """src/{split/}CLASS/* → dst, n images per class and split."""
    for split in [d for d in ("train", "valid", "test") if (src / d).is_dir()] or [""]:
        for c in classes or sorted(p.name for p in (src / split).iterdir() if p.is_dir()):
            (dst / split / c).mkdir(parents=True, exist_ok=True)
            for p in _images(src / split / c, n if split == "train" else max(2, n // 4)):
                shutil.copy(p, dst / split / c / p.name)
    return dst


def make_data(name: str, tmp: Path, n: int) -> tuple[Path, str]:
    """(data folder, what it is) for recipe `name`."""
    plants = SHARED / "plant_seedlings"
    if name == "plants":
        return _copy_folders(plants, tmp / "plants", n), f"plant_seedlings subset ({n}/class train)"
    if name == "cifar10":
        return _copy_folders(SHARED / "cifar10_png", tmp / "cifar10", n), f"cifar10_png subset ({n}/class train)"
    if name == "idl":
        src, dst = SHARED / "idl_multilabel", tmp / "idl"
        rows = pd.read_csv(src / "labels.csv", dtype=str, keep_default_na=False).head(14 * n)
        (dst / "images").mkdir(parents=True)
        for f in rows["fname"]:
            shutil.copy(src / "images" / f, dst / "images" / f)
        rows.to_csv(dst / "labels.csv", index=False)
        return dst, f"idl_multilabel first {len(rows)} rows"
    species = sorted(p.name for p in (plants / "train").iterdir() if p.is_dir())
    if name == "wood":   # flat folder, class = the first two digits of the file name
        dst = tmp / "wood"
        dst.mkdir()
        for k, s in enumerate(species):
            for i, p in enumerate(_images(plants / "train" / s, n)):
                shutil.copy(p, dst / f"{k + 1:02d}{i:04d}{p.suffix}")
        return dst, f"stand-in: {len(species)} plant species renamed CCnnnn.jpg"
    if name == "scenes":
        return (_copy_folders(plants / "train", tmp / "scenes", n, species[:8]),
                "stand-in: 8 plant species folders")
    raise SystemExit(f"no data rule for {name}")


def overrides(name: str, size: int, online: bool) -> list[str]:
    from clfapp import config, recipes

    cfg = config.load(recipes.find(name)[1])
    sets = [f"data.size={32 if name == 'cifar10' else size}",
            f"train.freeze_epochs={min(1, cfg.train.freeze_epochs)}"]
    if cfg.train.schedule == "sgdr":
        sets.append("train.sgdr_cycles=1")
    if not online and cfg.model.arch not in OFFLINE_ARCHS:
        sets.append("model.arch=tf_efficientnet_lite0")
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=20, help="training images per class")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--only", default=",".join(RECIPES))
    ap.add_argument("--online", action="store_true", help="keep archs that download their weights")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the staged datasets are needed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="recipes-smoke-") as tmp:
        tmp = Path(tmp)
        for name in args.only.split(","):
            data, what = make_data(name, tmp, args.per_class)
            sets = overrides(name, args.size, args.online)
            cmd = [sys.executable, "-m", "clfapp", "fit", name, "--data", str(data), "--epochs", "1",
                   "--name", name] + [x for s in sets for x in ("--set", s)]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            metric = ""
            m = tmp / "runs" / name / "metrics.json"
            if m.is_file():
                m = json.loads(m.read_text())
                key = "f1_micro" if "f1_micro" in m else "accuracy"
                metric = f"{key} {m[key]:.3f}"
            elif out.returncode:
                metric = out.stderr.strip().splitlines()[-1][:100] if out.stderr.strip() else "?"
            rows.append((name, what, out.returncode, seconds, metric, " ".join(sets)))
            print(f"{name:8s} {what:44s} exit {out.returncode:3d} {seconds:6.1f} s  {metric:16s} {' '.join(sets)}",
                  flush=True)
    sys.exit(max(r[2] != 0 for r in rows))


if __name__ == "__main__":
    main()
