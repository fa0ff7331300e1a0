"""Where a training step's time goes, and what channels_last and smaller batches save.

    python bench/epoch_speed.py [--data ../shared/datasets/plant_seedlings] [--rounds 5]

Builds the plants-baseline learner (tf_efficientnet_lite0, 128 px, offline ImageNet weights,
every layer trainable), takes real augmented batches from its DataLoader, then times, in turn
within each round (so drift in the machine's speed hits every variant alike):

- data: producing one augmented batch (decoded images held in memory, fastai batch transforms);
- step NCHW @128: forward, loss, backward, optimizer step in the default memory format;
- step channels_last @128, @112, @96, @80: the same in channels_last, at the sizes progressive
  resizing (train.progressive) passes through;
- frozen step, norms train / body fixed: the frozen phase's step (head trainable) in
  channels_last @128, with the body's norm layers trainable (fastai's train_bn) and without
  (train.train_bn = false, clfapp's default: no gradient reaches the body);
- step frozen_stride 4 @128, @80: the main phase's step with the body's first layers (output
  stride up to 4: the stem and first stages) kept frozen (train.frozen_stride = 4).

Prints seconds per batch (median over rounds) and each variant's ratio to NCHW @128, round by
round, then the main-phase epoch cost of progressive resizing (train/progressive.py's ramp
weighted by the measured step times, relative to channels_last @128).
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/datasets/plant_seedlings")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"{args.data} not found: the plant seedlings dataset is needed")

    import torch
    import torch.nn.functional as F

    from clfapp import train
    from clfapp.cli import common
    from clfapp.train.progressive import FULL_AT, size_at
    from clfapp.train.schedules import freeze_early

    cfg = common.resolve_config(str(HERE / "recipes" / "plants-baseline.toml"), data=args.data,
                                sets=["train.channels_last=false"])
    prep = train.prepare(cfg, Path(tempfile.mkdtemp()))
    learn = prep.learn
    model, loss_func = learn.model.train(), learn.loss_func

    def trainable(mode: str) -> None:
        """full: every layer; frozen_bn: head + the body's norm layers; frozen: head alone;
        early4: all but the layers train.frozen_stride = 4 keeps."""
        learn.train_bn = mode == "frozen_bn"
        learn.create_opt()        # train_bn is read here (fastai's force_train state)
        learn.freeze() if mode.startswith("frozen") else learn.unfreeze()
        if mode == "early4":
            freeze_early(learn, 4)
    it = iter(learn.dls.train)

    def data_batch():
        t = time.perf_counter()
        xb, yb = next(it)
        return time.perf_counter() - t, xb, yb

    _, xb, yb = data_batch()

    def step(x, cl: bool, size: int):
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        fmt = torch.channels_last if cl else torch.contiguous_format
        model.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
        loss = loss_func(model(x), yb)
        loss.backward()
        learn.opt.step()
        learn.opt.zero_grad()

    variants = {"step NCHW @128": (False, 128, "full")}
    variants.update({f"step channels_last @{s}": (True, s, "full") for s in (128, 112, 96, 80)})
    variants["frozen step, norms train"] = (True, 128, "frozen_bn")
    variants["frozen step, body fixed"] = (True, 128, "frozen")
    variants.update({f"step frozen_stride 4 @{s}": (True, s, "early4") for s in (128, 80)})
    times = {name: [] for name in ["data"] + list(variants)}
    for r in range(args.rounds):
        times["data"].append(statistics.mean(data_batch()[0] for _ in range(args.steps)))
        for name, (cl, size, mode) in variants.items():
            trainable(mode)
            step(xb, cl, size)                          # warm-up: this format and size
            t = time.perf_counter()
            for _ in range(args.steps):
                step(xb, cl, size)
            times[name].append((time.perf_counter() - t) / args.steps)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()), flush=True)

    base = times["step NCHW @128"]
    print(f"\n{'':28s} {'s/batch':>8s} {'ratio to NCHW @128 per round (median)':>40s}")
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(base, ts)]
        print(f"{name:28s} {statistics.median(ts):8.3f} "
              f"{' '.join(f'{x:.2f}' for x in ratios):>32s} ({statistics.median(ratios):.2f}x)")

    def speedup(label: str, slow: str, fast: str) -> None:
        r = [a / b for a, b in zip(times[slow], times[fast])]
        print(f"{label}: {statistics.median(r):.2f}x faster (per round: {' '.join(f'{x:.2f}' for x in r)})")
    speedup("frozen step, body fixed vs norms train (train.train_bn false vs true)",
            "frozen step, norms train", "frozen step, body fixed")
    for s in (128, 80):
        speedup(f"frozen_stride 4 vs every layer training @{s}",
                f"step channels_last @{s}", f"step frozen_stride 4 @{s}")

    # progressive resizing: the main phase's mean step time along the ramp, from the sizes measured
    med = {s: statistics.median(times[f"step channels_last @{s}"]) for s in (128, 112, 96, 80)}

    def at(size: int) -> float:   # sizes between the measured ones: nearest measured below
        return med[max(s for s in med if s <= size)] if size >= 80 else med[80]
    for frac in (0.625, 0.75):
        ramp = [at(size_at(128, frac, (i + 0.5) / 100)) for i in range(100)]
        print(f"progressive {frac} (full size from {FULL_AT:.0%} of the main phase): main-phase step "
              f"time {statistics.mean(ramp) / med[128]:.2f} of channels_last @128's "
              f"({med[128] / statistics.mean(ramp):.2f}x faster); frozen phase at "
              f"{size_at(128, frac, 0)} px")


if __name__ == "__main__":
    main()
