"""`clfapp tune` on a plant-seedlings subset: a pruned Optuna search, then the best recipe refitted
against the recipe it started from, both measured on held-out images no trial saw.

    OMP_NUM_THREADS=1 python bench/tune_plants.py [--trials 8] [--per-class 20,12,12]
        [--size 96] [--epochs 4] [--fresh]

Writes (never committed) under runs/: bench-tune-plants/ (subset CSVs, the recipe with its
[tune] table) and the study runs/tune-bench-plants/ (study.db, leaderboard.csv, plots/,
best.toml, trial-N/); then fits runs/bench-tune-best and runs/bench-tune-base.

The subset: per class, `train` images from train/, `valid` and `test` images from valid/ of
../shared/datasets/plant_seedlings. The study sees train + valid only (its CSV has no test
rows, so no trial measures them); the two refits use a CSV with the same train and valid rows
plus the test rows, whose accuracy is the fair comparison (the validation figure of the best
trial was chosen on validation, so it is optimistic). The recipe is plants.toml with the
[tune] table below, 1 + --epochs epochs at --size px, batch 16 (the subset has a few hundred
images), progressive resizing off (it would start below 64 px) and no time budget per trial.

OMP_NUM_THREADS=1 on a machine shared with other training processes: two 2-thread OpenMP
processes thrash each other (an epoch here took 2 min with 2 threads, 9 s with 1).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLANTS = REPO.parent / "shared" / "datasets" / "plant_seedlings"
CLFAPP = str(Path(sys.executable).with_name("clfapp"))

SPACE = """
[tune]
"train.lr" = {low = 5e-4, high = 5e-2, log = true}
"train.lr_mult" = [1.0, 3.0, 10.0]
"aug.min_scale" = [0.35, 0.5, 0.75]
"loss.name" = ["label_smoothing", "cross_entropy"]
sampler = "tpe"
pruner = "median"
startup_trials = 3
warmup_epochs = 2
"""
SETS = ["train.freeze_epochs=1", "train.budget=", "train.progressive=1.0", "train.bs=16"]


def subset(out: Path, n_train: int, n_valid: int, n_test: int) -> tuple[Path, Path]:
    """(study CSV: train + valid rows, refit CSV: the same rows + test rows)."""
    rows = []
    for cls in sorted(p.name for p in (PLANTS / "train").iterdir() if p.is_dir()):
        train = sorted((PLANTS / "train" / cls).iterdir())[:n_train]
        valid = sorted((PLANTS / "valid" / cls).iterdir())
        rows += [(p, cls, "train") for p in train]
        rows += [(p, cls, "valid") for p in valid[:n_valid]]
        rows += [(p, cls, "test") for p in valid[n_valid:n_valid + n_test]]
    study_csv, refit_csv = out / "subset.csv", out / "subset_test.csv"
    for path, keep in ((study_csv, ("train", "valid")), (refit_csv, ("train", "valid", "test"))):
        path.write_text("fname,label,split\n" + "".join(f"{p.relative_to(PLANTS)},{c},{s}\n" for p, c, s in rows if s in keep))
    return study_csv, refit_csv


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    print(f"  exit {rc}, {seconds / 60:.1f} min (log: {log})", flush=True)
    if rc != 0:
        sys.exit(f"failed; see {log}:\n" + log.read_text()[-2000:])
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--per-class", default="20,12,12", help="train,valid,test images per class")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=4, help="after the one frozen epoch")
    ap.add_argument("--fresh", action="store_true", help="delete an earlier study of this bench first")
    args = ap.parse_args()
    os.chdir(REPO)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path("runs/bench-tune-plants")
    study_dir = Path("runs/tune-bench-plants")
    if args.fresh:
        for d in (study_dir, Path("runs/bench-tune-best"), Path("runs/bench-tune-base")):
            shutil.rmtree(d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_valid, n_test = map(int, args.per_class.split(","))
    study_csv, refit_csv = subset(out, n_train, n_valid, n_test)
    recipe = out / "plants-tune.toml"
    recipe.write_text((REPO / "recipes" / "plants.toml").read_text() + SPACE)
    data = ["--data", str(PLANTS), "--set", f"data.labels=csv:{study_csv.resolve()}"]
    sets = [x for s in SETS + [f"data.size={args.size}", f"train.epochs={args.epochs}"] for x in ("--set", s)]

    tune_s = run([CLFAPP, "tune", str(recipe), "--trials", str(args.trials), "--study",
                  "tune-bench-plants", *data, *sets], out / "tune.log")
    best = study_dir / "best.toml"
    refit = ["--data", str(PLANTS), "--set", f"data.labels=csv:{refit_csv.resolve()}"]
    for name in ("bench-tune-best", "bench-tune-base"):
        shutil.rmtree(Path("runs") / name, ignore_errors=True)
    best_s = run([CLFAPP, "fit", str(best), *refit, "--name", "bench-tune-best"], out / "fit_best.log")
    base_s = run([CLFAPP, "fit", str(recipe), *refit, *sets, "--name", "bench-tune-base"],
                 out / "fit_base.log")

    import pandas as pd
    board = pd.read_csv(study_dir / "leaderboard.csv")
    log = (out / "tune.log").read_text()
    print("\n" + log[log.rfind("\ntrial  state") + 1:] if "\ntrial  state" in log else "")
    pruned = board[board["state"] == "pruned"]
    per_epoch = []
    for _, r in pruned.iterrows():
        res = pd.read_csv(Path(r["folder"]) / "results.csv") if Path(r["folder"], "results.csv").exists() else None
        per_epoch.append(float(res["seconds"].mean()) if res is not None else float("nan"))
    saved = sum((p - e) * s for p, e, s in zip(pruned["planned"], pruned["epochs"], per_epoch)) / 60
    done = board[board["state"] == "complete"]
    print(f"study: {len(board)} trials, {len(done)} finished, {len(pruned)} pruned "
          f"(after {', '.join(str(int(e)) for e in pruned['epochs'])} of {int(board['planned'].max())} "
          f"epochs; about {saved:.1f} min of training saved), {tune_s / 60:.1f} min wall")
    print(f"mean minutes per finished trial {done['seconds'].mean() / 60:.2f}, "
          f"per pruned trial {pruned['seconds'].mean() / 60:.2f}" if len(pruned) else "")

    def figures(run_name: str) -> tuple[float, float]:
        m = json.loads((Path("runs") / run_name / "metrics.json").read_text())
        return m["valid"]["accuracy"], m["accuracy"]
    print(f"\n{'':28s} {'valid acc':>9s} {'test acc':>9s} {'minutes':>8s}")
    for label, run_name, s in (("plants recipe (the start)", "bench-tune-base", base_s),
                               ("best.toml (tuned)", "bench-tune-best", best_s)):
        v, t = figures(run_name)
        print(f"{label:28s} {v:9.4f} {t:9.4f} {s / 60:8.1f}")
    print(f"(validation: {n_valid} images per class, the study chose on them; test: {n_test} per "
          f"class, never seen by the study; both with the recipe's flip TTA)")


if __name__ == "__main__":
    main()
