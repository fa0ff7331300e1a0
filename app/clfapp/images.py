"""Reading image files into fixed-size RGB uint8 arrays, the one way training and inference share.

Decoding and resizing happen once per image (not once per epoch): on a 2-core CPU the per-epoch
JPEG decode and resize of a plain fastai pipeline costs as much as the model itself.
"""
from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RESIZE_FILTER = Image.Resampling.BICUBIC


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def find_images(folder: Path) -> list[Path]:
    """Every image file below `folder`, recursively, in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image(p))


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette and transparent images become RGB (transparency over white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits, convert() would clip at 255
        a = np.asarray(img, dtype=np.float64)
        a = a / 257.0 if a.max() > 255 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | Path, size: int, resize: str = "squish") -> np.ndarray:
    """Decode `path` to a `size`x`size`x3 uint8 array. Raises OSError/ValueError on a bad file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter is not the user's problem
        with Image.open(path) as img:
            img.load()
            img = to_rgb(ImageOps.exif_transpose(img))
    target = (size, size)
    if resize == "crop":
        img = ImageOps.fit(img, target, method=RESIZE_FILTER)
    elif resize == "pad":
        img = ImageOps.pad(img, target, method=RESIZE_FILTER, color=(0, 0, 0))
    else:
        img = img.resize(target, RESIZE_FILTER)
    return np.asarray(img, dtype=np.uint8)


def try_read(path: str | Path, size: int, resize: str) -> np.ndarray | None:
    """`read_image`, or None (and a warning naming the file) when it cannot be decoded."""
    try:
        return read_image(path, size, resize)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
        return None


def read_many(paths: list[str], size: int, resize: str, progress: bool = True):
    """Decode `paths` in parallel threads (PIL releases the GIL while decoding).

    Returns (array N'xSxSx3, kept) where `kept` lists the indices of the readable paths.
    """
    from fastprogress.fastprogress import progress_bar

    threads = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda p: try_read(p, size, resize), paths, chunksize=16)
        if progress and len(paths) > 200 and sys.stdout.isatty():
            results = progress_bar(results, total=len(paths))
            results.comment = "decoding images"
        arrays = list(results)
    kept = [i for i, a in enumerate(arrays) if a is not None]
    stack = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, size, size, 3), np.uint8)
    return stack, kept
