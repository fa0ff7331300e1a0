"""Class weights against none on the same budget: macro-F1 and the recall of the smallest classes.

    python bench/class_weights.py [--data ../shared/datasets/plant_seedlings] [--epochs 6]

Two `clfapp fit` runs of bench/recipes/plants-baseline.toml that differ only in `loss.class_weights` ("auto": w = max(n)/n_c
from the training split, versus none), same seed, split, arch, size and epochs. Prints one row
per run: accuracy, macro-F1, and the recall of the three classes with the fewest training
images (from each run's splits.csv and metrics.json), then the difference.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd


def fit(name: str, data: str, epochs: int, extra: list[str]) -> Path:
    recipe = Path(__file__).resolve().parent / "recipes" / "plants-baseline.toml"
    cmd = [sys.executable, "-m", "clfapp", "fit", str(recipe), "--data", data, "--epochs", str(epochs),
           "--name", name, *extra]
    print("$ clfapp " + " ".join(cmd[3:]), flush=True)
    out = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed:\n{out.stderr[-3000:]}")
    return Path("runs") / name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/plant_seedlings")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--tag", default="cw", help="run folder prefix")
    args = ap.parse_args()
    runs = {"none": fit(f"{args.tag}-none", args.data, args.epochs, []),
            "auto": fit(f"{args.tag}-auto", args.data, args.epochs, ["--set", "loss.class_weights=auto"])}
    splits = pd.read_csv(runs["none"] / "splits.csv", dtype=str)
    counts = splits[splits["split"] == "train"]["label"].value_counts().sort_values()
    smallest = list(counts.index[:3])
    rows = []
    for kind, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        rows.append({"class_weights": kind, "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                     **{f"recall {c} (n={counts[c]})": m["per_class"][c]["recall"] for c in smallest}})
    table = pd.DataFrame(rows).set_index("class_weights")
    table.loc["auto - none"] = table.loc["auto"] - table.loc["none"]
    print(table.round(4).to_string())


if __name__ == "__main__":
    main()
