"""How many batches the budget planner must time before its estimate holds (train/budget.py).

    python bench/budget_probe.py idl [--batches 30]

Builds the recipe's learner as `clfapp fit` does, then trains its first `--batches` batches at
full size, the body frozen and then the whole net (in that order, as the planner times them),
and prints every batch's seconds. Then, for a few (warm-up, timed) pairs, what the planner's
probe would have measured against the steady speed (the median of the last half of the
batches): a ratio above 1 is an over-estimate, which plans fewer epochs than fit.
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def stamps(learn, n: int) -> list[float]:
    """[start, end of batch 1, ..., end of batch n] of a real fit on `learn`."""
    from clfapp.train import budget
    probe = budget._probe_callback(n, 1, valid=False)   # named lr_finder: full-size batches
    with learn.no_logging(), learn.no_bar():
        learn.fit(1, 1e-4, cbs=[probe])
    return probe.t_train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("recipe")
    ap.add_argument("--batches", type=int, default=30)
    args = ap.parse_args()

    from clfapp import train
    from clfapp.cli import common
    from clfapp.train import budget

    cfg = common.resolve_config(args.recipe)
    if not Path(cfg.data.path).exists():
        sys.exit(f"{cfg.data.path} not found: the recipe's dataset is needed")
    learn = train.prepare(cfg, Path(tempfile.mkdtemp())).learn
    for phase in ("frozen", "whole"):
        learn.freeze() if phase == "frozen" else learn.unfreeze()
        t = stamps(learn, args.batches)
        per = [b - a for a, b in zip(t, t[1:])]
        steady = statistics.median(per[len(per) // 2:])
        print(f"\n{phase}: seconds per batch, batch by batch:")
        print(" ".join(f"{x:.2f}" for x in per))
        print(f"steady (median of the last {len(per) - len(per) // 2}): {steady:.3f} s/batch")
        for warm, timed in ((1, 3), (2, 4), (4, 4), (6, 6)):
            if warm + timed > len(per):
                continue
            kept = budget.WARMUP_BATCHES
            budget.WARMUP_BATCHES = warm     # _per_batch reads it
            try:
                est, _ = budget._per_batch(t[:warm + timed + 1])
            finally:
                budget.WARMUP_BATCHES = kept
            print(f"  warm-up {warm}, timed {timed}: {est:.3f} s/batch = {est / steady:.2f}x steady")


if __name__ == "__main__":
    main()
