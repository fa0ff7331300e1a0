"""Embeddings: a model's penultimate-layer features of any number of images, streamed to disk.

What "penultimate" means here: the input of the model's last Linear layer, the layer that
turns features into class scores. clfapp's models are fastai's `add_head(body, ...)`
(models/__init__.py): body -> pooling (AdaptiveConcatPool2d: average and max, so twice the
body's channels) -> Flatten -> [BatchNorm1d, Dropout, Linear, ReLU] per hidden size ->
BatchNorm1d -> Dropout -> Linear(D, classes). The features are what that last Linear reads,
in eval mode (dropout off, BatchNorm at its running statistics): D = its in_features (512
with fastai's default head, model.head_hidden = "512"; twice the body's channels with
head_hidden = "none", where it is the pooled body features themselves). That is the space the
classifier separates its classes in linearly, it is the same layer for every arch (timm,
torchvision, clfapp's own, cut bodies), and it is found without knowing the arch: a forward
hook on the last Linear module.

An ensemble's features are its members' features side by side, in member order (ensemble.json
`members`): D = the sum of theirs. An ONNX export is refused: its graph ends in probabilities
(and may hold several TTA views, each through the head), and taking features out of it means
rewriting the graph; the run or ensemble it was exported from gives the same features.

The features are of the plain image at the model's own inference input (spec size, resize,
normalisation; each member at its own): never TTA-averaged, whatever the spec says about
TTA, since a mirror's features are another point, not a better estimate of the same one.

Output, for `--out FILE`: FILE.npy (float32, N x D, one row per readable image), FILE.csv (the
index: row, path; row i of the CSV is row i of the array) and FILE.meta.json (the model, its
digest and D: what wrote the rows). They are written as FILE.npy.part, FILE.csv.part and
FILE.meta.json.part, renamed at the end: a finished name is never a half-written file. The array part is a .npy file sized
for every image given, filled through a memory map batch by batch (memory holds a batch,
whatever N); the index rows are appended and flushed after their features, so the rows the
index lists are always on disk. At the end the header is rewritten with the rows written and
the file cut to them. `--resume` keeps the rows of the part files (or of finished outputs) and
embeds only the files not in them; rows written by another model are refused.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config import INFER_BS
from ..errors import UsageError
from . import onnx_format

FEATURES = "input of the last Linear layer (eval mode), plain image, no TTA"
"""What the rows are, as the record says it."""
HEADER_BYTES = 128
"""The .npy header written here is always this long (magic, version, length, padded dict), so
it can be rewritten in place with another row count."""
RECORD_FORMAT = 1
UNCOMPARED = ("model",)
"""Record keys a resume does not compare: the folder may have moved; its digest says the model."""


def outputs(out) -> tuple[Path, Path, Path]:
    """(FILE.npy, the index, FILE.meta.json) for `--out FILE`: the index is FILE.csv, or
    FILE.parquet when FILE ends in .parquet (which needs pyarrow); a .npy or .csv suffix is
    FILE's own."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        import importlib.util
        if importlib.util.find_spec("pyarrow") is None:
            raise UsageError(f"--out {out}: a parquet index needs pyarrow, which is not "
                             "installed; leave out .parquet for a CSV index, or pip install "
                             "pyarrow")
    if suffix in (".npy", ".csv", ".parquet"):
        out = out.with_suffix("")
    index = ".parquet" if suffix == ".parquet" else ".csv"
    return (out.with_name(out.name + ".npy"), out.with_name(out.name + index),
            out.with_name(out.name + ".meta.json"))


def _csv_to_parquet(source: Path, target: Path) -> None:
    """The index rows (row, path) of a CSV as a parquet file, batch by batch."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq
    schema = pa.schema([("row", pa.int64()), ("path", pa.string())])
    reader = pcsv.open_csv(source, convert_options=pcsv.ConvertOptions(
        column_types={"row": pa.int64(), "path": pa.string()}))
    tmp = target.with_name(target.name + ".tmp")
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
    os.replace(tmp, target)


def _parquet_to_csv(source: Path, target: Path) -> None:
    """A finished parquet index back as the CSV rows a resume appends to, batch by batch."""
    import pyarrow.parquet as pq
    with open(target, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["row", "path"])
        for batch in pq.ParquetFile(source).iter_batches(columns=["row", "path"]):
            w.writerows(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))


def part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# --- the model side --------------------------------------------------------------------------

def refuse_onnx(folder) -> None:
    """One line for an ONNX export folder: its graph gives probabilities only."""
    folder = Path(folder)
    if not onnx_format.is_export(folder):
        return
    parent = folder.resolve().parent
    from . import bundle, ensemble_meta
    hint = ""
    if ensemble_meta.is_ensemble(parent) or (parent / "model" / bundle.META).is_file():
        hint = f" ({parent})"
    raise UsageError(f"{folder} is an ONNX export, whose graph gives probabilities, not features; "
                     f"give the run or ensemble folder it was exported from{hint}")


def last_linear(model):
    """The model's last Linear module: the classifier whose input the features are."""
    import torch.nn as nn
    found = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not found:
        raise UsageError("the model has no Linear layer to take features from")
    return found[-1]


class Embedder:
    """Features of a run's or an ensemble's model(s): `features(x_by_input)`, width `dim`."""

    def __init__(self, predictor):
        members = getattr(predictor, "members", None)
        self.predictor = predictor
        self.models = list(members) if members else [predictor]
        self.layers = [last_linear(m.model) for m in self.models]
        self.dims = [int(layer.in_features) for layer in self.layers]
        from .decoding import distinct, input_of
        self.member_inputs = [input_of(m.meta) for m in self.models]
        self.inputs = distinct(self.member_inputs)

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def features(self, x_by_input: dict):
        """float32 N x D for uint8 N x 3 x S x S batches given per input: each model's plain
        image (its normalisation), the input its last Linear reads, side by side."""
        import torch
        parts = []
        for m, layer, key in zip(self.models, self.layers, self.member_inputs):
            seen = []
            hook = layer.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
            try:
                x = m.normalise(x_by_input[key].float() / 255.0)
                with torch.inference_mode():
                    m.model(x.contiguous(memory_format=torch.channels_last))
            finally:
                hook.remove()
            parts.append(seen[-1].float().reshape(len(x), -1))
        return torch.cat(parts, dim=1).numpy().astype(np.float32, copy=False)


class _PerInput:
    """Item i: (i, [image at each input]) or (i, None) when it cannot be read at one of them:
    predict's `_Images` (the image cache included) once per distinct (size, resize)."""

    def __init__(self, paths, inputs):
        from .predict import _Images
        self.sources = [_Images(paths, size, resize) for size, resize in inputs]

    def __len__(self):
        return len(self.sources[0])

    def __getitem__(self, i):
        arrays = []
        for source in self.sources:   # try_read names a file it cannot read, once
            a = source[i][1]
            if a is None:
                return i, None
            arrays.append(a)
        return i, arrays


def _collate(batch):
    import torch
    kept = [(i, a) for i, a in batch if a is not None]
    skipped = [i for i, a in batch if a is None]
    if not kept:
        return torch.zeros(0, dtype=torch.long), [], skipped
    idx = torch.tensor([i for i, _ in kept])
    xs = [torch.from_numpy(np.stack([a[k] for _, a in kept])).permute(0, 3, 1, 2)
          for k in range(len(kept[0][1]))]
    return idx, xs, skipped


def batches(embedder: Embedder, paths: list[str], bs: int = INFER_BS, workers: int = 0):
    """(indices into `paths`, features, indices skipped as unreadable) per batch, in order."""
    import torch
    loader = torch.utils.data.DataLoader(_PerInput(paths, embedder.inputs), batch_size=bs,
                                         num_workers=workers, collate_fn=_collate)
    for idx, xs, skipped in loader:
        feats = embedder.features(dict(zip(embedder.inputs, xs))) if len(idx) else None
        yield idx.numpy(), feats, skipped


# --- the file side ---------------------------------------------------------------------------

def _npy_header(rows: int, dim: int) -> bytes:
    body = ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, dim))
    body = body.ljust(HEADER_BYTES - 10 - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")


def _read_header(path: Path) -> tuple[int, int, int]:
    """(rows, dim, header length) of a .npy file of float32 rows."""
    with open(path, "rb") as f:
        if np.lib.format.read_magic(f) != (1, 0):
            raise ValueError("not a .npy file this command wrote")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
    if fortran or dtype != np.float32 or len(shape) != 2:
        raise ValueError("not a float32 N x D array")
    return int(shape[0]), int(shape[1]), offset


class Sink:
    """FILE.npy.part (a memory-mapped array) + FILE.csv.part (row, path) + FILE.meta.json."""

    def __init__(self, out, record: dict, dim: int, resume: bool):
        self.npy, self.index, self.meta = outputs(out)
        self.csv = self.npy.with_suffix(".csv")
        """The index as it is written: part(self.csv) holds CSV rows until `finish`."""
        self.record, self.dim = record, dim
        self.done: set[str] = set()
        self.rows = 0
        self.capacity = 0
        self.offset = HEADER_BYTES
        self.made: list[Path] = []
        if resume and self._resumable():
            self._reopen()
        else:
            self._start()

    # starting and resuming

    def _resumable(self) -> bool:
        parts = [part(p) for p in (self.npy, self.csv, self.meta)]
        if not (any(p.exists() for p in parts) or (self.index.exists() and self.npy.exists())):
            return False
        meta = part(self.meta) if part(self.meta).exists() else self.meta
        try:
            before = json.loads(meta.read_text())
        except (OSError, ValueError):
            raise UsageError(f"--resume: {meta} is missing or cannot be read, so what wrote the "
                             "rows is unknown; leave out --resume to embed every file again")
        before = before if isinstance(before, dict) else {}
        diff = [f"{k} {before.get(k)!r} (now {v!r})" for k, v in self.record.items()
                if k not in UNCOMPARED and before.get(k) != v]
        if diff:
            raise UsageError(f"--resume: {self.npy.with_suffix('')} was written with "
                             f"{'; '.join(diff[:2])}; resume with the same model, or leave out "
                             "--resume")
        # finished earlier (or killed while renaming): the finished files become parts again,
        # and the files not in them are added
        if not part(self.csv).exists() and self.index.exists():
            if self.index != self.csv:
                _parquet_to_csv(self.index, part(self.csv))
                self.index.unlink()
            else:
                os.replace(self.csv, part(self.csv))
        for p in (self.npy, self.meta):
            if not part(p).exists() and p.exists():
                os.replace(p, part(p))
        return True

    def _start(self) -> None:
        for p in (self.npy, self.csv, self.meta):
            part(p).unlink(missing_ok=True)
        with open(part(self.npy), "wb") as f:
            f.write(_npy_header(0, self.dim))
        self.made.append(part(self.npy))
        self.f = open(part(self.csv), "w", newline="")
        self.made.append(part(self.csv))
        csv.writer(self.f, lineterminator="\n").writerow(["row", "path"])
        self.f.flush()
        self._write_record()

    def _reopen(self) -> None:
        npy, index = part(self.npy), part(self.csv)
        try:
            rows, dim, self.offset = _read_header(npy)
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume: {npy} cannot be read ({e}); leave out --resume to "
                             "embed every file again")
        if dim != self.dim:
            raise UsageError(f"--resume: {npy} holds {dim} features a row, this model gives "
                             f"{self.dim}; resume with the same model, or leave out --resume")
        self.capacity = (os.path.getsize(npy) - self.offset) // (4 * dim)
        data = index.read_bytes() if index.exists() else b""
        end = data.rfind(b"\n") + 1   # a row cut short by a kill is dropped
        lines = list(csv.reader(io.StringIO(data[:end].decode("utf-8", errors="replace"),
                                            newline="")))
        if not lines or lines[0] != ["row", "path"]:
            raise UsageError(f"--resume: {index} is not an embedding index (row, path); leave "
                             "out --resume to embed every file again")
        for k, row in enumerate(r for r in lines[1:] if r):
            if len(row) != 2 or row[0] != str(k) or k >= self.capacity:
                raise UsageError(f"--resume: {index} row {k + 1} does not follow the array; "
                                 "leave out --resume to embed every file again")
            self.done.add(row[1])
            self.rows = k + 1
        with open(index, "rb+") as f:
            f.truncate(end)
        self.f = open(index, "a", newline="")

    def _write_record(self) -> None:
        target = part(self.meta)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, target)
        self.made.append(target)

    # writing

    def reserve(self, n: int) -> None:
        """Room in the array for `n` more rows (the file grows; nothing is read into memory)."""
        need = self.rows + n
        if need > self.capacity:
            with open(part(self.npy), "rb+") as f:
                f.truncate(self.offset + 4 * self.dim * need)
            self.capacity = need

    def write(self, paths: list[str], feats: np.ndarray) -> None:
        """The features first (flushed to disk), then their index rows: the index never names
        a row whose features are not written."""
        n = len(paths)
        if n == 0:
            return
        self.reserve(n)
        mm = np.memmap(part(self.npy), dtype="<f4", mode="r+", offset=self.offset,
                       shape=(self.capacity, self.dim))
        mm[self.rows:self.rows + n] = feats
        mm.flush()
        del mm
        w = csv.writer(self.f, lineterminator="\n")
        w.writerows([self.rows + k, p] for k, p in enumerate(paths))
        self.f.flush()
        self.rows += n

    def finish(self) -> None:
        """Header with the rows written, the file cut to them, both renamed to their names."""
        self.f.close()
        header = _npy_header(self.rows, self.dim)
        with open(part(self.npy), "rb+") as f:
            if self.offset != len(header):   # a finished file numpy wrote: shift the rows
                raise UsageError(f"{part(self.npy)} has a header this clfapp did not write; "
                                 "leave out --resume")
            f.write(header)
            f.truncate(self.offset + 4 * self.dim * self.rows)
        os.replace(part(self.npy), self.npy)
        if self.index != self.csv:
            _csv_to_parquet(part(self.csv), self.index)
            part(self.csv).unlink()
        else:
            os.replace(part(self.csv), self.csv)
        os.replace(part(self.meta), self.meta)   # the record last: it vouches for the rows

    def discard(self) -> None:
        """Nothing was embedded (or the run failed before a row): remove what this made."""
        if not self.f.closed:
            self.f.close()
        for p in self.made:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def record(predictor, folder, embedder: Embedder) -> dict:
    """What writes the rows: the model (folder, kind, weights digest), D, the inputs."""
    from .stream import model_digest
    return {"format": RECORD_FORMAT, "model": str(Path(folder).resolve()), "kind": predictor.kind,
            "digest": model_digest(predictor), "dim": embedder.dim, "dims": embedder.dims,
            "inputs": [list(i) for i in embedder.member_inputs], "features": FEATURES}


def run(embedder: Embedder, files: list[str], sink: Sink, bs: int = INFER_BS, workers: int = 0,
        progress: bool = True) -> int:
    """Embed `files` into `sink`, batch by batch, with a progress bar on long runs; unreadable
    images are skipped (data.images.try_read names each). Returns the rows written."""
    from fastprogress.fastprogress import progress_bar

    t0 = time.perf_counter()
    written, skipped = 0, []
    sink.reserve(len(files))   # the array's room at once (cut to the rows written at the end)
    bar = progress_bar(range(len(files))) if progress and len(files) > 3 * bs else None
    if bar is not None:
        bar.update(0)
    for idx, feats, bad in batches(embedder, files, bs, workers):
        skipped += bad
        if len(idx):
            sink.write([files[i] for i in idx], feats)
            written += len(idx)
        if bar is not None:
            bar.comment = f"{written / max(time.perf_counter() - t0, 1e-9):.0f} images/s"
            bar.update(min(len(files), int(max([*idx, *bad], default=-1)) + 1))
    if bar is not None and bar.last_v is not None:
        bar.update(len(files))
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) skipped", file=sys.stderr)
    return written
