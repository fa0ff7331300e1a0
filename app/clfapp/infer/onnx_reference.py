"""Reference preprocessing for a clfapp ONNX export: the exact pixels clfapp feeds model.onnx.

`clfapp export` writes this file as `preprocess.py` next to `model.onnx` and `onnx.json`. It
needs only Pillow and numpy (it imports nothing from clfapp) and repeats clfapp's own decoding
step by step; clfapp's tests check that it gives the same pixels and, through ONNX Runtime,
the same probabilities as `clfapp predict`. With it, a program outside clfapp gets clfapp's
answers:

    import onnxruntime as ort
    from preprocess import feed
    session = ort.InferenceSession("model.onnx")
    probs = session.run(None, feed(["photo.jpg", "scan.png"]))[0]   # inputs as onnx.json says

or, for one graph input of size S and resize R (onnx.json `inputs[].size`, `inputs[].resize`):

    x = preprocess("photo.jpg", S, R)[None]        # 1 x 3 x S x S float32 in [0, 1]

The steps, in order (onnx.json's `preprocessing` states the same):

1. Decode with Pillow. JPEG only: libjpeg decodes at 1/2, 1/4 or 1/8 scale (Pillow's `draft`),
   the largest reduction that keeps both sides at least 2 x size. This changes the pixels a
   little (DCT scaling is not the same filter as the bicubic resize): a consumer that skips it
   comes close to clfapp (about 0.2/255 per pixel on average for a 3000 px photo) but not equal.
2. Turn the image upright by its EXIF Orientation tag (`ImageOps.exif_transpose`).
3. Make it 8-bit RGB: 16/32-bit grey (`I;16*`, `I`) is divided by 257 (plain `I` only when its
   maximum is above 255), clipped to [0, 255] and truncated, then repeated on 3 channels;
   transparent images (RGBA, LA, PA, palette with transparency) are composited over white
   (255, 255, 255); every other mode is Pillow's `convert("RGB")`.
4. Resize to size x size with Pillow's bicubic filter: `squish` stretches the whole image,
   `crop` takes the centred crop of the target's aspect (`ImageOps.fit`), `pad` fits it inside
   and pads with black (`ImageOps.pad`, centred).
5. uint8 H x W x 3 -> float32 3 x H x W, divided by 255 (float32).

The mean/std normalisation, the softmax (single-label) or sigmoid (multi-label), test-time
augmentation when the export has it (the mean over mirrored views; onnx.json `tta`) and, for an
ensemble, the weighted mean of its members are inside the graph: do not apply them again.

Run as a script (needs onnxruntime too): `python preprocess.py IMAGE...` prints each image's
probabilities per class as one JSON line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BICUBIC = getattr(Image, "Resampling", Image).BICUBIC
RESIZE_METHODS = ("squish", "crop", "pad")
HERE = Path(__file__).resolve().parent


def to_rgb(img: Image.Image) -> Image.Image:
    """Step 3: 8-bit RGB; 16/32-bit grey scaled by 1/257, transparency over white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I"):
        a = np.asarray(img, dtype=np.float64)
        a = a / 257.0 if img.mode.startswith("I;16") or a.max() > 255 else a
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB")   # 2-D: "L"
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def resized(img: Image.Image, size: int, resize: str) -> Image.Image:
    """Step 4: `img` to size x size by `resize` (squish, crop or pad), Pillow bicubic."""
    target = (size, size)
    if resize == "crop":
        return ImageOps.fit(img, target, method=BICUBIC)
    if resize == "pad":
        return ImageOps.pad(img, target, method=BICUBIC, color=(0, 0, 0))
    return img.resize(target, BICUBIC)


def pixels(image, size: int, resize: str = "squish") -> np.ndarray:
    """Steps 1-4: `image` (a path, or a PIL image) -> uint8 size x size x 3, RGB.

    A PIL image straight from `Image.open` (not yet loaded) gets the reduced-scale JPEG decode
    of step 1, as a path does; one already loaded is used as it is.
    """
    if resize not in RESIZE_METHODS:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_METHODS)}, got {resize!r}")
    size = int(size)
    opened = not isinstance(image, Image.Image)
    src = Image.open(image) if opened else image
    try:
        src.draft("RGB", (2 * size, 2 * size))   # step 1: a no-op unless a JPEG not yet loaded
        src.load()
        img = to_rgb(ImageOps.exif_transpose(src))   # steps 2 and 3
        return np.asarray(resized(img, size, resize), dtype=np.uint8)
    finally:
        if opened:
            src.close()


def preprocess(image, size: int, resize: str = "squish") -> np.ndarray:
    """Steps 1-5: `image` (a path, or a PIL image) -> float32 3 x size x size in [0, 1], the
    graph's input for one image (stack several with np.stack for a batch)."""
    a = pixels(image, size, resize)
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


def feed(images, folder=HERE) -> dict:
    """{graph input name: N x 3 x S x S float32} for `images` (paths or PIL images), one entry
    per input listed in `folder`/onnx.json (an ensemble may have several sizes)."""
    info = json.loads((Path(folder) / "onnx.json").read_text())
    return {spec["name"]: np.stack([preprocess(im, spec["size"], spec["resize"]) for im in images])
            for spec in info["inputs"]}


def main(argv=None) -> None:
    import onnxruntime as ort

    paths = list(sys.argv[1:] if argv is None else argv)
    info = json.loads((HERE / "onnx.json").read_text())
    session = ort.InferenceSession(str(HERE / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in paths:
        probs = session.run(None, feed([path]))[0][0]
        print(json.dumps({"path": path, "probabilities": dict(zip(info["classes"], map(float, probs)))}))


if __name__ == "__main__":
    main()
