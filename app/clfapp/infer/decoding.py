"""Decoding images for models that may want them at several (size, resize): each image is
decoded once per distinct input, and one that cannot be read at one of them is dropped for
all, so every model sees the same images. Used by the ensemble predictor, the ONNX predictor
and the export's parity check alike; numpy and PIL only (the ONNX predictor needs no torch)."""
from __future__ import annotations

import sys

import numpy as np

from ..data import images
from ..errors import UsageError

Input = tuple[int, str]
"""(size, resize): how a model wants its images decoded."""


def input_of(meta) -> Input:
    """The (size, resize) a bundle's model takes its images at (model.json)."""
    return int(meta.input_size), meta.resize


def distinct(inputs) -> list[Input]:
    """The distinct inputs, in the order they first appear."""
    return list(dict.fromkeys(inputs))


def decode_per_input(paths: list[str], inputs) -> tuple[dict[Input, np.ndarray], np.ndarray]:
    """({input: uint8 N' x S x S x 3}, kept indices into `paths`): every path decoded once per
    distinct input; an image unreadable at one input is dropped at every input (each decode
    after the first reads only the images still kept)."""
    kept = np.arange(len(paths))
    pixels: dict[Input, np.ndarray] = {}
    for key in distinct(inputs):
        arr, ok = images.read_many([paths[i] for i in kept], *key, progress=False)
        if len(ok) < len(kept):
            still = np.isin(kept, kept[ok])
            pixels = {k: v[still] for k, v in pixels.items()}
            kept = kept[ok]
        pixels[key] = arr
    return pixels, kept


def gathered(pieces: list[np.ndarray], kept: list[np.ndarray], n_paths: int):
    """(pieces, kept indices) concatenated from per-batch parts; says how many images were
    unreadable, and stops when none could be read (every predictor ends this way)."""
    if not pieces:
        raise UsageError("none of the images could be read")
    skipped = n_paths - sum(map(len, kept))
    if skipped:
        print(f"warning: {skipped} unreadable image(s) skipped", file=sys.stderr)
    return np.concatenate(pieces), np.concatenate(kept)
