"""Progressive resizing: early training batches at a smaller size, the last ones at full size.

A convolution's cost grows with the pixel count, so a batch at 0.75 x the size costs about
half as much: the early epochs, where the net learns coarse features, run faster, and the
final quarter of the main phase trains at `data.size`, the size the model is validated,
saved and used at. Images are decoded once at `data.size`; the smaller batches are made by
resizing the augmented batch (antialiased bilinear), so nothing is decoded twice.
"""
from __future__ import annotations

from fastai.callback.core import Callback

STEP = 16
"""Sizes are multiples of this: 16 divides every stride of the nets clfapp builds well enough
for the padding to stay symmetric, and keeps the number of distinct shapes small."""
FULL_AT = 0.75
"""Share of the main phase after which batches are at full size."""


def size_at(full: int, start_fraction: float, progress: float) -> int:
    """The training size at `progress` (0 = the main phase's first batch, 1 = its last): from
    start_fraction x full, linearly up to full at FULL_AT, then full; a multiple of STEP,
    never above full (nor below STEP)."""
    if start_fraction >= 1:
        return full
    ramp = min(1.0, max(0.0, progress) / FULL_AT)
    size = full * (start_fraction + (1 - start_fraction) * ramp)
    return full if ramp >= 1 else min(full, max(STEP, int(size) // STEP * STEP))


def cost_fraction(full: int, start_fraction: float) -> float:
    """A phase's training compute relative to full size, taken as proportional to the pixel
    count and averaged over the phase's ramp (what the budget planner scales its full-size
    measurement by); the frozen and the main phase ramp alike (see ProgressiveResize)."""
    return epoch_cost_fraction(full, start_fraction, 0, 1)   # the phase as one epoch


def epoch_cost_fraction(full: int, start_fraction: float, epoch: int, epochs: int) -> float:
    """`cost_fraction` of one epoch of a phase of `epochs`: the ramp makes each epoch dearer
    than the last (the budget's guard predicts the next epoch from the last one with it)."""
    def pixels(progress: float) -> float:
        return (size_at(full, start_fraction, progress) / full) ** 2
    return sum(pixels((epoch + (i + 0.5) / 100) / epochs) for i in range(100)) / 100


class ProgressiveResize(Callback):
    """Resize training batches per `size_at`; validation batches stay at full size.

    fastai's `pct_train` runs 0 → 1 over each fit call, and each call ramps: the frozen phase
    (the first call of a pretrained fit) as well as the main phase. A frozen phase held at the
    start size throughout ended plant seedlings' recipe 2-3 points lower (best epoch 0.856 without
    and 0.840 with train.ema, against 0.873 and 0.872 with the ramp; one run each): the head
    fitted to small images' features is a worse start. So the callback needs no state: which
    phase runs, and a resumed run's position, are fastai's `pct_train`.
    """
    # before CPUBFloat16 (10) opens its autocast region; fastai's ChannelsLast (-1) converts
    # the model only, and the first convolution puts whatever size comes out of here in NHWC
    order = 5

    def __init__(self, full: int, start_fraction: float):
        self.full, self.start_fraction = full, start_fraction
        self.probe_size: int | None = None
        """Set by the budget's probe to time batches at that size (budget.measure)."""

    @property
    def start_size(self) -> int:
        """The size of a phase's first batches."""
        return size_at(self.full, self.start_fraction, 0.0)

    def before_batch(self):
        if not self.training:
            return
        if hasattr(self.learn, "lr_finder"):
            # the LR finder and the budget's timing probe (named like it) see full-size
            # batches, or the size the probe asks for
            size = self.probe_size
            if size is None:
                return
        else:
            size = size_at(self.full, self.start_fraction, self.pct_train)
        x = self.learn.xb[0]
        if x.dim() == 4 and x.shape[-1] != size:
            import torch.nn.functional as F
            small = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)
            self.learn.xb = (small,) + self.learn.xb[1:]
