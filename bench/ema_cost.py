"""What train.ema costs per training step: the same learner (the plants recipe at full size,
the whole net training) timed over N batches with and without WeightEMA, alternating.

    python bench/ema_cost.py [--batches 12] [--rounds 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

from fastai.callback.core import Callback, CancelFitException

from clfapp import config, recipes, train
from clfapp.models.callbacks import WeightEMA


class Stopwatch(Callback):
    order = 100

    def __init__(self, n):
        self.n, self.stamps = n, []

    def before_train(self):
        self.stamps = [time.perf_counter()]

    def after_batch(self):
        if self.training:
            self.stamps.append(time.perf_counter())
            if len(self.stamps) > self.n:
                raise CancelFitException()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = config.load(recipes.find("plants")[1], {"train": {"progressive": 1.0, "budget": ""}})
    prep = train.prepare(cfg, Path(tempfile.mkdtemp()))
    learn = prep.learn
    learn.unfreeze()
    for r in range(args.rounds):
        for name, extra in (("plain", []), ("ema", [WeightEMA(0.999)])):
            watch = Stopwatch(args.batches)
            with learn.no_logging(), learn.no_bar():
                learn.fit(1, 1e-4, cbs=[watch, *extra])
            s = watch.stamps
            per = (s[-1] - s[2]) / (len(s) - 3)   # the first two batches are warm-up
            print(f"round {r} {name:5s} {per:.3f} s/batch", flush=True)


if __name__ == "__main__":
    main()
