"""images.read_many: thread-safe with respect to warnings, and no second full-size copy."""
from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from PIL import Image

from clfapp.data import images

from conftest import COLOURS, make_image


def _images(folder, n: int, size: int = 20) -> list[str]:
    colours = list(COLOURS.values())
    return [str(make_image(folder / f"img_{i:03d}.png", colours[i % 3], size, seed=i))
            for i in range(n)]


def test_read_many_leaves_the_warning_filters_alone(tmp_path, monkeypatch):
    paths = _images(tmp_path, 64)
    # a palette PNG with byte transparency and a corrupt file: PIL's noisy paths
    Image.new("RGB", (12, 12), COLOURS["red"]).quantize(colors=4).save(
        tmp_path / "pal.png", transparency=bytes([0, 255, 255, 255]))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    paths += [str(tmp_path / "pal.png"), str(tmp_path / "bad.jpg")]

    before = list(warnings.filters)
    seen = []  # the filters as a decoding thread sees them when it opens a file
    real_open = Image.open

    def spying_open(*args, **kwargs):
        seen.append(list(warnings.filters))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(images.Image, "open", spying_open)
    for _ in range(3):
        pixels, kept = images.read_many(paths, 16, "squish", progress=False)
        assert len(kept) == len(paths) - 1 and pixels.shape == (len(kept), 16, 16, 3)
    assert warnings.filters == before
    assert len(seen) == 3 * len(paths)
    changed = [f for f in seen if f != before]
    assert not changed, f"{len(changed)} decode(s) ran with modified warning filters"


def test_the_cli_silences_pil_chatter_once_in_the_main_thread():
    from clfapp.cli.common import command

    @command
    def body():
        with warnings.catch_warnings(record=True) as caught:
            for category in (UserWarning, Image.DecompressionBombWarning):
                warnings.warn_explicit("chatter", category, "Image.py", 1, module="PIL.Image")
            warnings.warn_explicit("mine", UserWarning, "x.py", 1, module="clfapp.x")
        return [str(w.message) for w in caught]

    with warnings.catch_warnings():  # command() sets process filters: put them back after
        assert body() == ["mine"]


def test_read_many_peak_memory_is_about_one_output_array(tmp_path):
    n, size = 200, 48
    paths = _images(tmp_path, n, size=24)
    images.read_many(paths[:4], size, "squish", progress=False)  # imports, thread machinery
    out_bytes = n * size * size * 3
    tracemalloc.start()
    try:
        pixels, kept = images.read_many(paths, size, "squish", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pixels.shape == (n, size, size, 3) and kept == list(range(n))
    assert pixels.nbytes == out_bytes
    assert peak < 1.5 * out_bytes, f"peak {peak / out_bytes:.2f}x the output array"
    # rows are in path order: each image's mean colour is its class colour
    colours = np.array(list(COLOURS.values()))
    means = pixels.reshape(n, -1, 3).mean(1)
    assert (np.abs(means - colours[np.arange(n) % 3]).max(1) < 30).all()


def test_read_many_drops_unreadable_rows_in_order(tmp_path):
    paths = _images(tmp_path, 12)
    for i in (0, 5, 6, 11):
        (tmp_path / f"img_{i:03d}.png").write_bytes(b"broken")
    pixels, kept = images.read_many(paths, 16, "squish", progress=False)
    assert kept == [1, 2, 3, 4, 7, 8, 9, 10]
    assert pixels.shape == (8, 16, 16, 3)
    for row, i in enumerate(kept):  # the compacted rows are the right images
        np.testing.assert_array_equal(pixels[row], images.read_image(paths[i], 16))
    pixels, kept = images.read_many(paths[:1], 16, "squish", progress=False)
    assert kept == [] and pixels.shape == (0, 16, 16, 3)


@pytest.mark.parametrize("n", [0, 1])
def test_read_many_tiny_inputs(tmp_path, n):
    pixels, kept = images.read_many(_images(tmp_path, n), 8, "crop", progress=False)
    assert pixels.shape == (n, 8, 8, 3) and kept == list(range(n))


def _full_decode(path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        return np.asarray(images.to_rgb(img).resize((size, size), images.RESIZE_FILTER))


def test_large_jpegs_decode_at_reduced_scale_with_the_same_pixels(tmp_path):
    rng = np.random.default_rng(0)
    # a smooth 1600 px photo-like image: low-frequency colour fields plus a little noise
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    big = Image.fromarray(base).resize((1600, 1200), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(big, dtype=np.int16) + rng.integers(-8, 9, (1200, 1600, 3)), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(noisy[:150, :150].astype(np.uint8)).save(tmp_path / "small.jpg", quality=90)

    decoded_sizes = []
    real_load = Image.Image.load

    def spying_load(img):
        decoded_sizes.append(img.size)
        return real_load(img)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image.Image, "load", spying_load)
        got = images.read_image(tmp_path / "big.jpg", 64)
    # libjpeg scaled by 1/8 (200 x 150): still at least twice 64 px on both sides
    assert decoded_sizes[0] == (200, 150)
    assert np.abs(got.astype(int) - _full_decode(tmp_path / "big.jpg", 64)).mean() < 1.5
    # an image smaller than twice the target is decoded whole: the same pixels as before
    assert np.array_equal(images.read_image(tmp_path / "small.jpg", 128),
                          _full_decode(tmp_path / "small.jpg", 128))
