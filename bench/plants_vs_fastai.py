"""clfapp against a plain fastai script on plant seedlings: same data, model, epochs and LR.

    python bench/plants_vs_fastai.py [--epochs 3] [--data ../shared/datasets/plant_seedlings]

Runs both one after the other on this machine and prints validation accuracy, wall seconds
(process start to end) and the clfapp / fastai ratios.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from runner import timed

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
        rows["plain fastai"] = (json.loads(out.strip().splitlines()[-1])["accuracy"], s)
        print(f"plain fastai: accuracy {rows['plain fastai'][0]:.4f}, {s:.1f} s", flush=True)
    if args.only != "fastai":
        name = f"bench-plants-{int(time.time())}"
        s, _ = timed([sys.executable, "-m", "clfapp", "fit", "plants", "--data", args.data,
                      "--epochs", str(args.epochs), "--name", name], env)
        metrics = json.loads((Path("runs") / name / "metrics.json").read_text())
        rows["clfapp"] = (round(metrics["accuracy"], 4), s)
        print(f"clfapp: accuracy {rows['clfapp'][0]:.4f}, {s:.1f} s", flush=True)
    print(f"\n{'':14s} {'accuracy':>9s} {'seconds':>8s}")
    for k, (acc, s) in rows.items():
        print(f"{k:14s} {acc:9.4f} {s:8.1f}")
    if len(rows) == 2:
        (a1, s1), (a2, s2) = rows["plain fastai"], rows["clfapp"]
        print(f"{'clfapp/fastai':14s} {a2 / a1:9.3f} {s2 / s1:8.3f}")


if __name__ == "__main__":
    main()
