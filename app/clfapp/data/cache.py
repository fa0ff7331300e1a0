"""The on-disk image cache: images decoded and resized once, kept as a memory-mapped array.

A dataset's images decoded at one (size, resize) are one *entry*: a raw uint8 file of
N x S x S x 3 rows (`KEY.u8`) and its index (`KEY.json`: every row's file path, mtime and
byte size). KEY hashes the list of (path, mtime_ns, bytes) asked for, with the size, resize
method, this format's version and the decoder (PIL's version, images.py's hash), so a changed,
added or removed file, or another decoder, gives
another key: the old entry is simply not found (invalidation), and the new one copies every
row that is still valid from the older entries instead of decoding it again.

Where: `$CLFAPP_CACHE/images/SIZEpx-RESIZE/` (default `~/.cache/clfapp/images/...`, the
same root as the converted weights).

Written atomically: rows go into `KEY.u8.PID.tmp`, which is fsynced and renamed, and only then
is the index written (itself through a .tmp and a rename). The index is what makes an entry
exist, so a build killed at any point leaves nothing that looks complete; its .tmp file is
removed by the next build once its process is gone.

Read: `np.memmap(mode="c")`: rows are paged in from the file as the DataLoader asks for
them (copy-on-write: writable for torch, never written back), so memory stays bounded
whatever the dataset's size; the kernel drops clean pages under pressure.

Deleted while in use: a build drops the entries it supersedes (and those of another decoder)
by unlinking their files, never by writing into them. A reader keeps what it indexed: `Lookup`
opens every entry's data file when it indexes it and reads rows through that open file, and
a fit maps its entry at once; an unlinked file stays whole for whoever holds it open, so a
`data prepare` or `fit` running beside a `predict` never takes its rows away (an entry gone
before it could be opened is simply not indexed, and a row that cannot be read is decoded).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import images
from .. import config

VERSION = 1
CHUNK = 64
"""Images per decode task: large enough that a process pool's messaging is noise, small enough
for a smooth progress bar."""


def root() -> Path:
    """The cache's folder: $CLFAPP_CACHE/images, else $XDG_CACHE_HOME (~/.cache)/clfapp/images."""
    base = os.environ.get("CLFAPP_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clfapp"
    return Path(base) / config.IMAGE_CACHE_SUBDIR


def folder(size: int, resize: str) -> Path:
    return root() / f"{size}px-{resize}"


def stamps(paths: list[str]) -> list[tuple[str, int, int]]:
    """(absolute path, mtime_ns, bytes) of each file; (path, -1, -1) for a missing one."""
    out = []
    for p in paths:
        p = os.path.abspath(p)
        try:
            st = os.stat(p)
            out.append((p, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p, -1, -1))
    return out


@functools.lru_cache(maxsize=1)
def decoder_id() -> str:
    """PIL's version and a hash of images.py: another decoder, or a change in how clfapp decodes
    (a colour mode handled differently, say), may give other pixels, so other keys."""
    from PIL import __version__ as pil_version
    return pil_version + ":" + hashlib.sha256(Path(images.__file__).read_bytes()).hexdigest()[:16]


def key_of(stamped: list[tuple[str, int, int]], size: int, resize: str) -> str:
    h = hashlib.sha256(json.dumps([VERSION, decoder_id(), size, resize]).encode())
    for p, m, b in stamped:
        h.update(f"{p}\0{m}\0{b}\n".encode())
    return h.hexdigest()[:24]


def decoded_bytes(n: int, size: int) -> int:
    return n * size * size * 3


def wanted(mode: str, stamped: list[tuple[str, int, int]], size: int) -> bool:
    """Whether to build an entry: data.cache on, or auto with data that is not small, by
    either measure: the files to decode (decode time) or the decoded array (memory)."""
    if mode != "auto":
        return mode == "on"
    file_bytes = sum(max(b, 0) for _, _, b in stamped)
    limit = config.IMAGE_CACHE_MIN_BYTES
    return file_bytes >= limit or decoded_bytes(len(stamped), size) >= limit


@dataclass
class Entry:
    """A complete cache entry: its index and a lazily opened read-only view of its rows."""
    index: Path
    meta: dict
    file: object = field(default=None, repr=False, compare=False)
    """The data file, opened by the build that made the entry before it was published: no
    other process can delete it from under that build's caller."""

    @property
    def data(self) -> Path:
        return self.index.with_suffix(".u8")

    @property
    def rows(self) -> list:
        return self.meta["rows"]

    def open(self, file=None) -> np.ndarray:
        """The rows as an np.memmap, N x S x S x 3 uint8 (copy-on-write: nothing reaches the
        file, nothing is read before it is used), of `file` (the data file opened earlier,
        still whole if deleted since) or of the data file by name."""
        s = self.meta["size"]
        if not self.rows:
            return np.zeros((0, s, s, 3), dtype=np.uint8)
        file = file if file is not None else self.file
        return np.memmap(self.data if file is None else file, dtype=np.uint8, mode="c",
                         shape=(len(self.rows), s, s, 3))


def _read_entry(index: Path) -> Entry | None:
    """The entry of `index` when it is complete and its data file has the length it says."""
    try:
        meta = json.loads(index.read_text())
        s = meta["size"]
        if meta.get("version") != VERSION:
            return None
        if index.with_suffix(".u8").stat().st_size != decoded_bytes(len(meta["rows"]), s):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Entry(index, meta)


def find(stamped, size: int, resize: str) -> Entry | None:
    """The complete entry for exactly these files (in this order) at this size, or None."""
    return _read_entry(folder(size, resize) / f"{key_of(stamped, size, resize)}.json")


def entries(size: int, resize: str, stale: bool = False) -> list[Entry]:
    """Every complete entry at (size, resize) made by this decoder, oldest first (`stale`:
    those made by another decoder instead, which nothing reads)."""
    d = folder(size, resize)
    found = [_read_entry(p) for p in sorted(d.glob("*.json"))] if d.is_dir() else []
    return sorted((e for e in found if e and (e.meta.get("decoder") != decoder_id()) == stale),
                  key=lambda e: e.meta.get("created", 0))


class Lookup:
    """Rows of any complete entry for single files, valid while the file is unchanged:
    `evaluate` and `predict` read the images a fit cached instead of decoding them again."""

    def __init__(self, size: int, resize: str):
        self.where: dict[str, tuple[int, int, Entry, int]] = {}
        self._files: dict[Path, object] = {}
        for e in entries(size, resize):          # newer entries win
            try:   # held open: a build deleting this entry now leaves this process its rows
                self._files[e.data] = open(e.data, "rb")
            except OSError:
                continue   # deleted since it was listed: not indexed
            for r, (p, m, b) in enumerate(e.rows):
                self.where[p] = (m, b, e, r)
        self._open: dict[Path, np.ndarray] = {}

    def __bool__(self) -> bool:
        return bool(self.where)

    def locate(self, stamped) -> list[tuple[Entry, int] | None]:
        """For each (path, mtime, bytes): (entry, row) holding its pixels, or None."""
        out = []
        for p, m, b in stamped:
            hit = self.where.get(p)
            out.append((hit[2], hit[3]) if hit and hit[0] == m and hit[1] == b and m >= 0 else None)
        return out

    def read(self, entry: Entry, row: int) -> np.ndarray:
        """The row's pixels, through the file opened when the entry was indexed (OSError when
        it is gone: a spawned worker reopens by name)."""
        if entry.data not in self._open:  # mapped on first use (in each DataLoader worker)
            self._open[entry.data] = entry.open(self._files.get(entry.data))
        return np.array(self._open[entry.data][row])

    def __getstate__(self):  # memmaps and files are reopened in worker processes, not pickled
        return {"where": self.where, "_open": {}, "_files": {}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(d: Path) -> None:
    """.tmp files of builds whose process is gone (killed): never complete, never reused."""
    for t in d.glob("*.tmp"):
        try:
            pid = int(t.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            pid = -1
        if pid != os.getpid() and not _alive(pid):
            t.unlink(missing_ok=True)


def _decode_chunk(tmp: str, todo: list[tuple[int, str]], size: int, resize: str) -> list[int]:
    """Decode `todo` [(row, path)] straight into the file `tmp` (pwrite at the row's offset,
    from a thread or a worker process alike); returns the rows that could be read."""
    row_bytes = size * size * 3
    ok = []
    fd = os.open(tmp, os.O_WRONLY)
    try:
        for i, path in todo:
            a = images.try_read(path, size, resize)
            if a is not None:
                os.pwrite(fd, np.ascontiguousarray(a).data, i * row_bytes)
                ok.append(i)
    finally:
        os.close(fd)
    return ok


def _executor(kind: str, workers: int):
    if kind == "process":
        import multiprocessing
        # fork: workers start at once and share the parent's imports (spawn would re-import
        # torch in each); decoding touches no thread-held state.
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)  # PIL releases the GIL while decoding and resizing


def build(paths: list[str], size: int, resize: str, stamped=None, workers: int | None = None,
          kind: str | None = None, progress: bool = True) -> Entry:
    """Decode `paths` into a new complete entry (rows still valid in older entries are copied,
    not decoded) and return it. Unreadable files get a warning each and no row."""
    stamped = stamped or stamps(paths)
    d = folder(size, resize)
    d.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(d)
    key = key_of(stamped, size, resize)
    tmp = d / f"{key}.u8.{os.getpid()}.tmp"
    row_bytes = size * size * 3
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        f.truncate(len(stamped) * row_bytes)   # sparse until written
    ok: list[int] = []
    todo = []
    old = Lookup(size, resize)
    with open(tmp, "r+b") as f:
        for i, hit in enumerate(old.locate(stamped)):
            if hit is None:
                todo.append((i, stamped[i][0]))
            else:
                f.seek(i * row_bytes)
                f.write(old.read(*hit).tobytes())
                ok.append(i)
    reused = len(ok)
    if todo:
        ok += _decode_all(str(tmp), todo, size, resize, workers, kind, progress)
    ok.sort()
    with open(tmp, "r+b") as f:
        _compact(f, ok, row_bytes)
        f.flush()
        os.fsync(f.fileno())
    data = d / f"{key}.u8"
    os.replace(tmp, data)
    held = open(data, "rb")   # before the index: once published, another build may drop it
    meta = {"version": VERSION, "decoder": decoder_id(), "size": size, "resize": resize, "key": key,
            "rows": [list(stamped[i]) for i in ok], "kept": ok, "asked": len(stamped),
            "unreadable": [stamped[i][0] for i in sorted(set(range(len(stamped))) - set(ok))],
            "decoded": len(todo), "reused": reused, "created": time.time(),
            "seconds": round(time.perf_counter() - t0, 2)}
    index = d / f"{key}.json"
    tmp_index = d / f"{key}.json.{os.getpid()}.tmp"
    tmp_index.write_text(json.dumps(meta))
    os.replace(tmp_index, index)  # the entry exists from here on
    entry = Entry(index, meta, held)
    _drop_superseded(entry, size, resize)
    return entry


def _decode_all(tmp: str, todo, size, resize, workers, kind, progress) -> list[int]:
    from fastprogress.fastprogress import progress_bar
    from concurrent.futures import as_completed

    workers = workers or config.CACHE_WORKERS or max(1, min(8, os.cpu_count() or 1))
    kind = kind or config.CACHE_POOL
    chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
    ok: list[int] = []
    with _executor(kind, workers) as pool:
        futures = [pool.submit(_decode_chunk, tmp, c, size, resize) for c in chunks]
        done = as_completed(futures)
        if progress and len(todo) > 200:
            done = progress_bar(done, total=len(futures))
            done.comment = f"decoding {len(todo)} images into the cache"
        for fut in done:
            ok += fut.result()
    return ok


def _compact(f, kept: list[int], row_bytes: int) -> None:
    """Move the readable rows up over the holes of unreadable ones, then cut the file."""
    for j, i in enumerate(kept):  # j <= i: a row is read before anything overwrites it
        if i != j:
            f.seek(i * row_bytes)
            row = f.read(row_bytes)
            f.seek(j * row_bytes)
            f.write(row)
    f.truncate(len(kept) * row_bytes)


def _drop_superseded(new: Entry, size: int, resize: str) -> None:
    """Delete older entries all of whose rows are in `new` or belong to changed or removed
    files: nothing could read them again. (A running fit that maps one keeps its pages.)"""
    for e in entries(size, resize, stale=True):
        _delete(e)
    have = {tuple(r) for r in new.rows}
    for e in entries(size, resize):
        if e.index == new.index:
            continue
        rows = [tuple(r) for r in e.rows]
        rest = [r for r in rows if r not in have]
        if all(s != r for s, r in zip(stamps([r[0] for r in rest]), rest)):
            _delete(e)


def _delete(e: Entry) -> None:
    """Unlink an entry, index first (no reader lists it from then on). Never written into:
    a process that opened its data file keeps reading it whole. Where an open file cannot
    be deleted (Windows), the entry stays for a later build to drop."""
    try:
        e.index.unlink(missing_ok=True)
        e.data.unlink(missing_ok=True)
    except OSError:
        pass


def pixels_for(paths: list[str], size: int, resize: str, mode: str = "auto",
               progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """(N' x S x S x 3 uint8 array, kept indices into `paths`), as images.read_many returns.

    A complete entry for these files is used whenever one exists; else with `mode` on, or
    auto and data that is not small (`wanted`), one is built first; else the images are
    decoded into memory as before. The array is then an np.memmap over the entry.
    """
    if mode == "off":
        return images.read_many(paths, size, resize, progress)
    stamped = stamps(paths)
    entry = find(stamped, size, resize)
    if entry is not None:
        try:
            pixels = entry.open()   # mapped now: a build deleting it later leaves us its rows
        except OSError:
            entry = None            # deleted by another process since it was found
    if entry is not None:
        print(f"image cache: {len(entry.rows)} decoded images from {entry.data}", flush=True)
        for p in entry.meta["unreadable"]:
            print(f"warning: skipping unreadable image {p} (as when the cache was built)",
                  file=sys.stderr)
    elif wanted(mode, stamped, size):
        t0 = time.perf_counter()
        entry = build(paths, size, resize, stamped, progress=progress)
        m = entry.meta
        print(f"image cache: {m['decoded']} images decoded, {m['reused']} reused, in "
              f"{time.perf_counter() - t0:.1f} s into {entry.data} "
              f"({decoded_bytes(len(entry.rows), size) / 2**20:.0f} MiB)", flush=True)
        pixels = entry.open()
    else:
        return images.read_many(paths, size, resize, progress)
    return pixels, list(entry.meta["kept"])
