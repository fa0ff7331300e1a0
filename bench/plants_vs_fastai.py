"""clfapp against a plain fastai script on plant seedlings: same data, model, epochs and LR.

    python bench/plants_vs_fastai.py [--epochs 3] [--data ../shared/datasets/plant_seedlings]

Runs both one after the other on this machine and prints validation accuracy of the last epoch
(last vs last) and of the best epoch (best vs best: clfapp keeps its best epoch, the plain
script only records it), wall seconds (process start to end) and the clfapp / fastai ratios.
Both squish images to 128 px with bicubic resampling.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from runner import last_and_best, print_table, timed

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/datasets/plant_seedlings")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--only", choices=("fastai", "clfapp"))
    ap.add_argument("--progressive", type=float, default=0.0,
                    help="also run clfapp with train.progressive at this fraction (its speed option)")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"{args.data} not found: the plant seedlings dataset is needed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {}
    if args.only != "clfapp":
        s, out = timed([sys.executable, str(HERE / "plain_fastai_plants.py"), args.data, str(args.epochs)], env)
        r = json.loads(out.strip().splitlines()[-1])
        rows["plain fastai"] = (r["accuracy_last"], r["accuracy_best"], s)
        print(f"plain fastai: {rows['plain fastai']}", flush=True)
    sides = {"clfapp": []}
    if args.progressive:
        sides[f"clfapp prog {args.progressive:g}"] = ["--set", f"train.progressive={args.progressive}"]
    for side, extra in sides.items():
        if args.only == "fastai":
            break
        name = f"bench-plants-{int(time.time())}"
        s, _ = timed([sys.executable, "-m", "clfapp", "fit", str(HERE / "recipes" / "plants-baseline.toml"),
                      "--data", args.data,
                      "--epochs", str(args.epochs), "--name", name, *extra], env)
        last, best = last_and_best(Path("runs") / name, "accuracy")
        rows[side] = (last, best, s)
        print(f"{side}: {rows[side]}", flush=True)
    print_table(rows, ("acc last", "acc best"))


if __name__ == "__main__":
    main()
