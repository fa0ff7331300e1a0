"""The inference configuration fit chooses by measurement, against the one the formula alone
gives (issue 24): chosen on validation, scored on items the choice never saw.

    python bench/inference_choice.py fit   [--out /tmp/clfapp-inference-choice] [--budget 8m]
    python bench/inference_choice.py score [--out ...]

`fit` trains one run per dataset, each with a test split that neither the best epoch nor the
inference choice sees: plant seedlings with a seeded half of valid/ marked `test` (a label CSV
with a split column beside links to the shared folders), idl and the three folders of
bench/small_folders.py with data.test_pct = 0.3 (idl 0.2).

`score` reads each run: the candidates fit measured on validation (metrics.json
`inference.candidates`, its choice `inference.chosen`), and measures on the test split the
chosen configuration and the formula's (FixRes test size, TTA as aug.tta says), through the
same inference spec every command runs a model with. It prints per dataset both test figures,
their difference in images, and the mean gain.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from runner import timed

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets"
sys.path.insert(0, str(HERE))


def plants_with_held_out_half(out: Path) -> Path:
    """A label CSV over plant seedlings' train/ and valid/ (linked, never copied) with a seeded
    half of valid/ marked test."""
    folder = out / "plants"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        link = folder / split
        if not link.exists():
            link.symlink_to(SHARED / "plant_seedlings" / split)
    csv = folder / "labels.csv"
    if not csv.exists():
        rows = [(str(p.relative_to(folder)), p.parent.name, split)
                for split in ("train", "valid") for p in sorted((folder / split).glob("*/*"))]
        df = pd.DataFrame(rows, columns=["fname", "label", "split"])
        valid = df.index[df["split"] == "valid"].to_numpy()
        held = np.random.default_rng(0).choice(valid, size=len(valid) // 2, replace=False)
        df.loc[held, "split"] = "test"
        df.to_csv(csv, index=False)
    return csv


def jobs(out: Path, budget: str) -> dict[str, list[str]]:
    """{run name: clfapp fit arguments}."""
    from small_folders import build
    b = ["--budget", budget]
    runs = {"ic-plants": ["plants", "--data", str(plants_with_held_out_half(out)), *b],
            "ic-idl": ["idl", "--set", "data.test_pct=0.2", *b]}
    for name, folder in build(out / "small").items():
        runs[f"ic-{name}"] = [str(folder), "--set", "data.test_pct=0.3"]
    return runs


def fit(out: Path, budget: str, only: str | None) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, args in jobs(out, budget).items():
        if only and only not in name:
            continue
        if (Path("runs") / name / "metrics.json").is_file():
            print(f"{name}: already fitted", flush=True)
            continue
        seconds, _ = timed([sys.executable, "-m", "clfapp", "fit", *args, "--name", name], env)
        print(f"{name}: fitted in {seconds:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("fit", "score"))
    ap.add_argument("--out", default="/tmp/clfapp-inference-choice")
    ap.add_argument("--budget", default="8m", help="fit --budget of the plants and idl runs")
    ap.add_argument("--only", help="only the runs whose name contains this")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the shared datasets are needed")
    if args.phase == "fit":
        fit(Path(args.out), args.budget, args.only)
    else:
        score(Path(args.out), args.only)


def score(out: Path, only: str | None) -> None:
    raise SystemExit("score: not written yet")


if __name__ == "__main__":
    main()
