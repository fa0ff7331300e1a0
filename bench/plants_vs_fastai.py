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
    if args.only != "fastai":
        name = f"bench-plants-{int(time.time())}"
        s, _ = timed([sys.executable, "-m", "clfapp", "fit", str(HERE / "recipes" / "plants-baseline.toml"),
                      "--data", args.data,
                      "--epochs", str(args.epochs), "--name", name], env)
        last, best = last_and_best(Path("runs") / name, "accuracy")
        rows["clfapp"] = (last, best, s)
        print(f"clfapp: {rows['clfapp']}", flush=True)
    print_table(rows, ("acc last", "acc best"))


if __name__ == "__main__":
    main()
