"""Embedded datasets made from images that ship inside dependencies: no network, no download."""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UsageError


def digits(target: Path) -> int:
    """scikit-learn's 1797 handwritten digits (8x8, 16 grey levels) as PNGs in ImageNet layout."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, d.target)):
        folder = target / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png")
    return len(pixels)


SAMPLES = {"digits": digits}


def make(name: str, target: Path, quiet: bool = False) -> Path:
    """Write sample `name` to `target` (via a temporary folder: whole or absent)."""
    if name not in SAMPLES:
        raise UsageError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} already exists and is not empty")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = SAMPLES[name](tmp)
    if target.exists():
        target.rmdir()
    tmp.rename(target)
    if not quiet:
        print(f"wrote {n} images of sample '{name}' to {target}")
    return target


def ensure(name: str, target: Path) -> None:
    """Make sample `name` at `target` unless it is already there."""
    if not Path(target).exists():
        make(name, target)
