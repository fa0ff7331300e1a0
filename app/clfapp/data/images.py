"""Reading image files into fixed-size RGB uint8 arrays, the one way training and inference share.

Decoding and resizing happen once per image (not once per epoch): on a 2-core CPU the per-epoch
JPEG decode and resize of a plain fastai pipeline costs as much as the model itself.
"""
from __future__ import annotations

import os
import sys
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
        # I;16 is 16-bit by definition (a dark one may hold only values < 256); plain I (32-bit
        # int, what some PIL versions make of a 16-bit PNG) is judged by its range
        a = a / 257.0 if img.mode.startswith("I;16") or a.max() > 255 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | Path, size: int, resize: str = "squish") -> np.ndarray:
    """Decode `path` to a `size`x`size`x3 uint8 array. Raises OSError/ValueError on a bad file.

    It runs in worker threads, so it must not touch the warning filters: they are process-wide
    and `warnings.catch_warnings()` is not thread-safe (one thread restores a state another one
    changed, leaving the filters altered for good). PIL's EXIF/palette chatter is silenced once,
    in the main thread, where the CLI starts a command (cli/common.py `command`).
    """
    with Image.open(path) as img:
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay at least
        # twice the target (PIL's thumbnail() margin, so the bicubic below still has detail to
        # average). A 3000 px photo at 224 px decodes ~10x faster; small images are unchanged.
        img.draft("RGB", (2 * size, 2 * size))
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
    Each thread writes its image straight into a preallocated N x S x S x 3 array: a list of
    per-image arrays stacked at the end would hold every image twice at the peak (gigabytes for
    a large dataset). Unreadable rows are squeezed out in place.
    """
    from fastprogress.fastprogress import progress_bar

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def decode_into(i: int) -> bool:
        a = try_read(paths[i], size, resize)
        if a is not None:
            out[i] = a
        return a is not None

    threads = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(decode_into, range(len(paths)))
        if progress and len(paths) > 200 and sys.stdout.isatty():
            results = progress_bar(results, total=len(paths))
            results.comment = "decoding images"
        ok = list(results)
    kept = [i for i, good in enumerate(ok) if good]
    return _compact(out, kept), kept


def _compact(out: np.ndarray, kept: list[int]) -> np.ndarray:
    """`out[kept]` without a second full-size copy: rows move up in place, then the array is
    shrunk (a realloc: shrinking gives the tail's memory back and normally does not copy)."""
    if len(kept) == len(out):
        return out
    for j, i in enumerate(kept):  # j <= i: a row is read before anything overwrites it
        if i != j:
            out[j] = out[i]
    # refcheck=False: `out` is this module's own array, no view of it has been handed out.
    out.resize((len(kept), *out.shape[1:]), refcheck=False)
    return out
