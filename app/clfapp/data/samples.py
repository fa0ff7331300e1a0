"""Embedded datasets made from images that ship inside dependencies: no network, no download."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import UsageError


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


def digits_multi(target: Path, n: int = 2000, blank: float = 0.35, seed: int = 0) -> int:
    """Multi-label mosaics of scikit-learn's digits: 2x2 tiles (16x16 px), each tile blank with
    probability `blank`; an image's labels are the digits it shows (none when all are blank).
    Written as images/*.png plus labels.csv (fname,labels, space-separated)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    tiles = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    (target / "images").mkdir(parents=True)
    rows = ["fname,labels"]
    for i in range(n):
        mosaic = np.zeros((16, 16), np.uint8)
        shown = set()
        for k in range(4):
            if rng.random() < blank:
                continue
            j = rng.integers(len(tiles))
            r, c = divmod(k, 2)
            mosaic[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = tiles[j]
            shown.add(int(d.target[j]))
        name = f"{i:04d}.png"
        Image.fromarray(mosaic, mode="L").save(target / "images" / name)
        rows.append(f"{name},{' '.join(map(str, sorted(shown)))}")
    (target / "labels.csv").write_text("\n".join(rows) + "\n")
    return n


SAMPLES = {"digits": digits, "digits-multi": digits_multi}


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


def materialise(data_cfg) -> None:
    """Write the recipe's embedded sample dataset (data.sample) into data.path when that folder
    is missing; nothing when the recipe names no sample. Here, below training, so that fit,
    resume and tune share it without importing one another."""
    if data_cfg.sample:
        ensure(data_cfg.sample, Path(data_cfg.path))
