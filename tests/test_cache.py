"""The on-disk image cache (data/cache.py): built once, reused by fit, evaluate and predict,
invalidated when a file changes, never reused after a killed build, memory-mapped."""
from __future__ import annotations

import multiprocessing
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from clfapp import config, data
from clfapp.data import cache, images

from conftest import assert_usage_error, make_folder_dataset, make_image, write_recipe


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFAPP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


@pytest.fixture
def decodes(monkeypatch):
    """Every file decoded (images.try_read) in this process, but for report.html's few
    thumbnails and Grad-CAM images (report/html.py decodes those itself, at most a few dozen)."""
    import sys
    seen: list[str] = []
    real = images.try_read

    def counting(path, size, resize):
        if not sys._getframe(1).f_code.co_filename.endswith(os.path.join("report", "html.py")):
            seen.append(str(path))
        return real(path, size, resize)
    monkeypatch.setattr(images, "try_read", counting)
    return seen


def _cfg(root: Path, cache_mode: str = "on", size: int = 32):
    cfg = config.load(None, {"data": {"path": str(root), "size": size, "cache": cache_mode}})
    return cfg


def test_built_once_then_reused_as_a_memory_map(tmp_path, cache_root, decodes):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=8)
    ds = data.load(_cfg(root))
    n = len(ds.items)
    assert len(decodes) == n
    assert isinstance(ds.pixels, np.memmap) and ds.pixels.shape == (n, 32, 32, 3)
    # the very pixels in-memory decoding gives, row for row with the items
    expected, kept = images.read_many(ds.items["path"].tolist(), 32, "squish", progress=False)
    assert len(kept) == n and np.array_equal(np.asarray(ds.pixels), expected)
    decodes.clear()
    again = data.load(_cfg(root))
    assert decodes == []                                    # nothing decoded the second time
    assert Path(again.pixels.filename) == Path(ds.pixels.filename)
    assert np.array_equal(np.asarray(again.pixels), expected)
    assert again.items["path"].tolist() == ds.items["path"].tolist()
    assert len(list(cache_root.rglob("*.json"))) == 1


def test_a_changed_file_invalidates_and_only_it_is_decoded_again(tmp_path, cache_root, decodes):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=8)
    first = data.load(_cfg(root))
    old_file = Path(first.pixels.filename)
    changed = first.items["path"].iloc[3]
    make_image(Path(changed), (250, 250, 0), 24, seed=99)   # new content, new mtime and size
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    decodes.clear()
    second = data.load(_cfg(root))
    assert decodes == [changed]            # the other rows were copied from the old entry
    assert np.array_equal(np.asarray(second.pixels[3]), images.read_image(changed, 32, "squish"))
    assert not np.array_equal(np.asarray(second.pixels[3]), np.asarray(first.pixels[3]))
    others = [i for i in range(len(second.items)) if i != 3]
    assert np.array_equal(np.asarray(second.pixels[others]), np.asarray(first.pixels[others]))
    assert not old_file.exists()            # superseded: nothing could read it again
    assert len(list(cache_root.rglob("*.json"))) == 1


def _killed_build(paths, after: int) -> None:
    """A child that dies (as under kill -9: no cleanup) after decoding `after` images."""
    count = [0]
    real = images.read_image

    def dying(path, size, resize="squish"):
        count[0] += 1
        if count[0] > after:
            os._exit(9)
        return real(path, size, resize)
    images.read_image = dying
    cache.build(paths, 32, "squish", workers=1, kind="thread", progress=False)
    os._exit(0)


def test_a_killed_build_is_never_reused(tmp_path, cache_root):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=30)
    paths = [str(p) for p in images.find_images(root)]
    child = multiprocessing.get_context("fork").Process(target=_killed_build, args=(paths, 40))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    left = [p.name for p in (cache_root / "32px-squish").iterdir()]
    assert left and all(name.endswith(".tmp") for name in left)   # rows were being written
    stamped = cache.stamps(paths)
    assert cache.find(stamped, 32, "squish") is None and cache.entries(32, "squish") == []
    assert not cache.Lookup(32, "squish")                       # predict/evaluate see nothing
    pixels, kept = cache.pixels_for(paths, 32, "squish", "auto", progress=False)
    assert not isinstance(pixels, np.memmap)   # auto, small data, no entry: decoded in memory
    pixels, kept = cache.pixels_for(paths, 32, "squish", "on", progress=False)
    assert isinstance(pixels, np.memmap) and len(kept) == len(paths)
    left = [p.name for p in (cache_root / "32px-squish").iterdir()]
    assert not [n for n in left if n.endswith(".tmp")]           # the dead build's file is gone
    # an entry whose data file is cut short (a disk filled up, a hand edit) is not used either
    entry = cache.find(stamped, 32, "squish")
    os.truncate(entry.data, entry.data.stat().st_size - 1)
    assert cache.find(stamped, 32, "squish") is None


def test_unreadable_files_are_left_out_and_rows_stay_aligned(tmp_path, cache_root):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=4)
    paths = [str(p) for p in images.find_images(root)]
    bad = tmp_path / "shapes" / "red" / "bad.png"
    bad.write_bytes(b"not a png")
    paths.insert(2, str(bad))
    pixels, kept = cache.pixels_for(paths, 16, "crop", "on", progress=False)
    expected, kept_mem = images.read_many(paths, 16, "crop", progress=False)
    assert kept == kept_mem and 2 not in kept
    assert np.array_equal(np.asarray(pixels), expected)


def test_process_and_thread_pools_write_the_same_rows(tmp_path, monkeypatch):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=30)
    paths = [str(p) for p in images.find_images(root)]
    got = []
    for kind in ("thread", "process"):
        monkeypatch.setenv("CLFAPP_CACHE", str(tmp_path / kind))
        entry = cache.build(paths, 24, "pad", workers=2, kind=kind, progress=False)
        got.append(np.asarray(entry.open()))
    assert np.array_equal(got[0], got[1]) and len(got[0]) == len(paths)


def test_memory_mapped_not_loaded(tmp_path, cache_root):
    """Opening a 13 MB cache costs a few kB of allocations: rows are paged in when read."""
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=30)
    cfg = _cfg(root, size=224)
    first = data.load(cfg)
    size = first.pixels.nbytes
    assert size > 10 * 2**20
    tracemalloc.start()
    ds = data.load(cfg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert isinstance(ds.pixels, np.memmap)
    assert peak < size / 20, f"peak {peak} bytes for a {size}-byte cache"


def test_auto_uses_memory_for_small_data_and_the_cache_above_the_threshold(tmp_path, cache_root, monkeypatch):
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=4)
    small = data.load(_cfg(root, "auto"))
    assert not isinstance(small.pixels, np.memmap) and not cache_root.exists()
    monkeypatch.setattr(config, "IMAGE_CACHE_MIN_BYTES", 1000)
    big = data.load(_cfg(root, "auto"))
    assert isinstance(big.pixels, np.memmap)
    assert np.array_equal(np.asarray(big.pixels), small.pixels)
    off = data.load(_cfg(root, "off"))
    assert not isinstance(off.pixels, np.memmap)


def test_prepare_then_fit_evaluate_and_predict_decode_nothing(cli, tmp_path, cache_root, decodes, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=8)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    monkeypatch.chdir(tmp_path)
    r = cli("data", "prepare", "tiny.toml")
    assert r.exit_code == 0, r.output
    assert "image cache built: 24 images at 32 px" in r.output
    assert len(decodes) == 24
    decodes.clear()
    r = cli("data", "prepare", "tiny.toml")
    assert r.exit_code == 0 and "already there" in r.output and decodes == []
    r = cli("fit", "tiny.toml", "--name", "t")
    assert r.exit_code == 0, r.output
    assert "image cache: 24 decoded images from" in r.output
    r = cli("evaluate", "runs/t")
    assert r.exit_code == 0, r.output
    r = cli("predict", "runs/t", "data/shapes", "--out", "p.csv")
    assert r.exit_code == 0, r.output
    assert decodes == []          # fit, evaluate and predict all read the cached rows
    # a file changed since: predict decodes that one again, the cache is not trusted for it
    changed = sorted(Path("data/shapes/red").iterdir())[0]
    make_image(changed, (0, 0, 0), 24, seed=5)
    r = cli("predict", "runs/t", "data/shapes", "--out", "p2.csv")
    assert r.exit_code == 0, r.output
    assert [Path(p).resolve() for p in decodes] == [changed.resolve()]


def test_prepare_refuses_a_cache_that_is_off(cli, tmp_path, cache_root, monkeypatch):
    make_folder_dataset(tmp_path / "data" / "shapes", n_per_class=4)
    write_recipe(tmp_path / "tiny.toml", "data/shapes")
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli("data", "prepare", "tiny.toml", "--set", "data.cache=off"), "data.cache")
    assert_usage_error(cli("data", "prepare", "tiny.toml", "--pool", "gpu"), "--pool")


def test_another_decoder_invalidates_every_entry(tmp_path, cache_root, monkeypatch, decodes):
    """A PIL upgrade or a change to images.py may give other pixels: nothing made before it is
    read (not by fit, not by predict's lookup), and the stale entries are deleted."""
    root = make_folder_dataset(tmp_path / "shapes", n_per_class=4)
    paths = [str(p) for p in images.find_images(root)]
    old = cache.build(paths, 32, "squish", progress=False)
    monkeypatch.setattr(cache, "decoder_id", lambda: "another-decoder")
    assert cache.find(cache.stamps(paths), 32, "squish") is None
    assert not cache.Lookup(32, "squish")
    decodes.clear()
    pixels, kept = cache.pixels_for(paths, 32, "squish", "on", progress=False)
    assert len(decodes) == len(paths) and not old.data.exists() and not old.index.exists()


def test_rows_predict_indexed_survive_another_process_dropping_their_entry(tmp_path, cache_root, decodes):
    """Issue 24.8: a `data prepare` or `fit` that builds a newer entry deletes the one it
    supersedes; a `predict` that indexed that entry (its Lookup) still reads every row of it,
    without a crash and without decoding anything again."""
    from clfapp.infer.predict import _Images

    root = make_folder_dataset(tmp_path / "shapes", n_per_class=4)
    paths = [str(p) for p in images.find_images(root)]
    old = cache.build(paths, 32, "squish", progress=False)
    expected = np.array(old.open())
    reading = _Images(paths, 32, "squish")        # predict has indexed the cached rows
    assert all(r is not None for r in reading.rows)
    # meanwhile another process caches the folder with one image more: the old entry is
    # superseded (all its rows are in the new one) and deleted
    new = str(make_image(root / "red" / "red_new.png", (250, 0, 0), size=24))
    cache.build(paths + [new], 32, "squish", progress=False)
    assert not old.data.exists() and not old.index.exists()
    decodes.clear()
    got = [reading[i] for i in range(len(paths))]
    assert [i for i, _ in got] == list(range(len(paths)))
    assert np.array_equal(np.stack([a for _, a in got]), expected)
    assert decodes == []
