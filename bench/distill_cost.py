"""What distillation costs, live teacher against cached teacher, on scikit-learn's digits.

    python bench/distill_cost.py [--teacher-epochs 8] [--epochs 8] [--student test_resnet]
                                 [--work /tmp/clfapp-distill-bench] [--teacher RUN]

Fits a teacher (the digits recipe: resnet10t from scratch, 32 px), then the student arch three
ways on the teacher's split: alone (a plain `clfapp fit`), distilled with the live teacher (one
teacher forward per augmented batch), and distilled with `--cache-teacher` (the teacher run
once on the un-augmented training images). Prints, per row: the validation accuracy of the
kept (best) epoch and of the last epoch, seconds per epoch (results.csv), the teacher's
seconds per epoch (distill.json; for the cache, its one-off cost is in its own column) and the
wall seconds of the command. Single runs on a shared CPU: differences of a point or two of
accuracy and ~10% of time are noise.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd

from runner import timed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--student", default="test_resnet")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--temperature", default="2")
    ap.add_argument("--alpha", default="0.5")
    ap.add_argument("--work", default="/tmp/clfapp-distill-bench")
    ap.add_argument("--teacher", help="reuse this teacher run (a folder under WORK/runs) instead of fitting one")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    clfapp = [sys.executable, "-m", "clfapp"]
    os.chdir(work)
    tag = f"{os.getpid()}"

    teacher = args.teacher or f"teacher-{tag}"
    s = float("nan")
    if not args.teacher:
        s, _ = timed(clfapp + ["fit", "digits", "--epochs", str(args.teacher_epochs), "--name", teacher], env)
    rows = {"teacher (resnet10t)": _row(Path("runs") / teacher, s)}
    print(f"teacher: {rows['teacher (resnet10t)']}", flush=True)

    # digits' training keys, said for all three: a distilled student starts from the defaults,
    # not from the teacher's recipe (for the plain fit they are the recipe's own)
    student = ["--arch", args.student, "--no-pretrained", "--epochs", str(args.epochs),
               "--size", str(args.size), "--lr", "1e-2", "--set", "train.freeze_epochs=0"]
    plain = f"plain-{tag}"
    s, _ = timed(clfapp + ["fit", "digits", *student, "--splits-from", f"runs/{teacher}",
                           "--name", plain], env)
    rows["student alone"] = _row(Path("runs") / plain, s)
    print(f"student alone: {rows['student alone']}", flush=True)
    for label, flag in (("distill, live", "--live-teacher"), ("distill, cached", "--cache-teacher")):
        name = f"{flag.strip('-')}-{tag}"
        s, _ = timed(clfapp + ["distill", f"runs/{teacher}", *student, "--temperature",
                               args.temperature, "--alpha", args.alpha, flag, "--name", name], env)
        rows[label] = _row(Path("runs") / name, s)
        print(f"{label}: {rows[label]}", flush=True)

    print(f"\ndigits, student {args.student} at {args.size} px, {args.epochs} epochs, "
          f"T = {args.temperature}, alpha = {args.alpha}; runs in {work / 'runs'}")
    head = ("acc best", "acc last", "s/epoch", "teacher s/ep", "cache s", "wall s")
    print(f"{'':20s} " + " ".join(f"{h:>12s}" for h in head))
    for label, r in rows.items():
        print(f"{label:20s} " + " ".join(f"{v:12.4f}" if isinstance(v, float) and i < 2 else
                                         (f"{v:12.2f}" if isinstance(v, float) else f"{'-':>12s}")
                                         for i, v in enumerate(r)))


def _row(run: Path, wall: float) -> tuple:
    """(best acc, last acc, s/epoch, teacher s/epoch or None, cache s or None, wall s)."""
    res = pd.read_csv(run / "results.csv")
    best = float(json.loads((run / "metrics.json").read_text())["accuracy"])
    record = run / "distill.json"
    d = json.loads(record.read_text()) if record.is_file() else {}
    return (best, float(res["accuracy"].iloc[-1]), float(res["seconds"].mean()),
            d.get("teacher_seconds_per_epoch"), d.get("cache_seconds"), wall)


if __name__ == "__main__":
    main()
