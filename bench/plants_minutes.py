"""Validation accuracy against wall minutes on plant seedlings, for the settings tried.

    python bench/plants_minutes.py --train [--only NAME]    # train each setting below, then plot
    python bench/plants_minutes.py runs/A "label=runs/B" ... # plot finished runs (label: the legend's)
    python bench/plants_minutes.py --keep "label=runs/C"     # add curves to those already in the CSV

Each curve point is an epoch: x = minutes since the command started (everything before the
first epoch counted up front: imports, decoding, the model build), y = validation accuracy of
that epoch's weights; the last point of each curve, drawn as a star, is the run's final figure
(metrics.json: the kept epoch, with TTA where the recipe asks for it) at the command's whole
wall time. Writes bench/plants_minutes.png and bench/plants_minutes.csv.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from runner import timed

HERE = Path(__file__).resolve().parent
DATA = "../shared/datasets/plant_seedlings"

# The settings compared (clfapp fit arguments); the names become run folders runs/minutes-NAME-T.
SETTINGS = {
    "recipe": ["plants"],
    "study settings (before)": ["plants", "--set", "train.freeze=last_fraction", "--set", "train.freeze_epochs=6",
                                "--epochs", "2", "--lr", "2e-3", "--set", "train.progressive=1",
                                "--set", "aug.cutmix=1", "--set", "loss.class_weights=auto",
                                "--set", "aug.tta=false", "--set", "train.budget="],
}


def curve(arg: str) -> pd.DataFrame:
    """Per-epoch (minutes, accuracy) of a finished run ("LABEL=RUN" or RUN), and its final point."""
    label, _, path = arg.rpartition("=")
    run = Path(path)
    label = label or run.name
    df = pd.read_csv(run / "results.csv")
    m = json.loads((run / "metrics.json").read_text())
    wall = m.get("wall_seconds", m["seconds"])
    start = max(0.0, m["seconds"] - df["seconds"].sum())   # before, between and after the epochs
    ends = start + df["seconds"].cumsum()
    pts = pd.DataFrame({"run": label, "minutes": ends / 60, "accuracy": df["accuracy"], "final": False})
    final = pd.DataFrame({"run": [label], "minutes": [wall / 60], "accuracy": [m["accuracy"]], "final": [True]})
    return pd.concat([pts, final], ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="*", help="run folders, or LABEL=RUN")
    ap.add_argument("--keep", action="store_true", help="keep the curves already in plants_minutes.csv")
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--only")
    args = ap.parse_args()
    runs = list(args.runs)
    if args.train:
        if not Path(DATA).is_dir():
            sys.exit(f"{DATA} not found: the plant seedlings dataset is needed")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for name, cli_args in SETTINGS.items():
            if args.only and name != args.only:
                continue
            folder = f"minutes-{name.split()[0]}-{int(time.time())}"
            seconds, _ = timed([sys.executable, "-m", "clfapp", "fit", *cli_args, "--name", folder], env)
            m_path = Path("runs") / folder / "metrics.json"
            m = json.loads(m_path.read_text())
            m["wall_seconds"] = round(seconds, 1)     # the command's own wall time, process start to end
            m_path.write_text(json.dumps(m, indent=1))
            print(f"{name}: accuracy {m['accuracy']:.4f} in {seconds:.0f} s", flush=True)
            runs.append(f"{name}=runs/{folder}")
    if not runs:
        sys.exit("give run folders, or --train")
    kept = [pd.read_csv(HERE / "plants_minutes.csv")] if args.keep else []
    table = pd.concat(kept + [curve(r) for r in runs], ignore_index=True)
    table.to_csv(HERE / "plants_minutes.csv", index=False)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)   # more curves than tab10's 10 colours
    for name, g in table.groupby("run", sort=False):
        line = g[~g["final"]]
        (l,) = ax.plot(line["minutes"], line["accuracy"], marker="o", ms=3, label=name)
        f = g[g["final"]]
        ax.plot(f["minutes"], f["accuracy"], marker="*", ms=12, color=l.get_color(), linestyle="none")
    ax.axhline(0.90, color="grey", lw=0.8, ls="--")
    ax.axvline(15, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("wall minutes since the command started")
    ax.set_ylabel("validation accuracy")
    ax.set_title("plant seedlings, 2 CPU cores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "plants_minutes.png", dpi=100)
    print(table[table["final"]].to_string(index=False))


if __name__ == "__main__":
    main()
