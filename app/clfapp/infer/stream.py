"""Prediction over any number of files: rows written and flushed batch by batch, resumable.

`predict` classifies batch after batch (infer/predict.py `batches`) and appends each batch's
rows to OUT.part, flushed, so memory holds a few batches whatever the number of files and an
interruption (Ctrl-C, a kill, a crash) loses at most the batch in flight. The finished file is
renamed to OUT; `--resume` reads the rows of OUT.part (or of a finished OUT) back, drops a
last line cut short by the kill, and only the files not in it are classified: each file is in
the output once.

Beside OUT, `OUT.meta.json` records what wrote its rows: the model (its folder, kind and a
digest of its weights), TTA and its views, the input size(s) and the multi-label thresholds in
force. `--resume` compares it with what this command would use and refuses, in one line naming
what differs, rows that another model or setting wrote: one file never mixes two models' rows.
A CSV without that record (written by a clfapp before it) is resumed with a warning: its
columns are still checked, the rest cannot be.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..models.decisions import decision_thresholds
from ..errors import UsageError

RECORD = ".meta.json"
"""OUT + RECORD: what wrote OUT's rows (`record`)."""
RECORD_FORMAT = 1


def header(meta, top_k: int) -> list[str]:
    """The columns predict writes for this model (predict.table / multilabel_table)."""
    if meta.multi_label:
        return ["path", "labels", *meta.classes]
    k = min(top_k, len(meta.classes))
    return ["path", "label", "probability"] + [c for j in range(k)
                                               for c in (f"top{j + 1}", f"top{j + 1}_prob")]


def rows_of(predictor, paths: list[str], probs: np.ndarray, top_k: int, threshold: float | None):
    from . import predict as pr
    if predictor.meta.multi_label:
        return pr.multilabel_table(paths, probs, predictor.meta, threshold)
    return pr.table(paths, probs, predictor.classes, top_k)


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def model_digest(predictor) -> str:
    """A digest of what computes the probabilities: a run's weights, an export's model.onnx, an
    ensemble's members' digests with its vote and weights. model.json's thresholds and TTA are
    recorded apart (`record`), so a resume refused says which of them changed."""
    h = hashlib.sha256(predictor.kind.encode())
    members = getattr(predictor, "members", None)
    if members:
        for m in members:
            h.update(model_digest(m).encode())
        h.update(json.dumps([predictor.meta.vote,
                             [float(w) for w in predictor.weights]]).encode())
    elif predictor.kind == "onnx":
        from .onnx_format import ONNX_FILE
        _hash_file(h, Path(predictor.folder) / ONNX_FILE)
    else:
        from . import bundle
        _hash_file(h, bundle.find(predictor.folder) / bundle.WEIGHTS)
    return h.hexdigest()[:16]


def _views(predictor) -> list[str] | None:
    flips = getattr(predictor, "tta_flips", None)
    if flips is None:
        return None
    from .spec import tta_views
    return ["+".join(v) or "image" for v in tta_views(flips)]


def record(predictor, folder, tta: bool, threshold: float | None) -> dict:
    """What writes a CSV's rows: model, TTA views, input size(s), thresholds (multi-label)."""
    members = getattr(predictor, "members", None)
    views = ([_views(m) for m in members] if members else _views(predictor)) if tta else None
    if views is not None and all(len(v or []) <= 1 for v in (views if members else [views])):
        tta, views = False, None   # a model trained without flips: TTA is the image alone
    meta = predictor.meta
    return {"format": RECORD_FORMAT, "model": str(Path(folder).resolve()), "kind": predictor.kind,
            "digest": model_digest(predictor), "tta": bool(tta), "tta_views": views,
            "inputs": [[int(s), str(r)] for s, r in predictor.inputs],
            "thresholds": ([round(float(t), 6) for t in decision_thresholds(meta, threshold)]
                           if meta.multi_label else None)}


def _tta_words(r: dict) -> str:
    if not r.get("tta"):
        return "TTA off"
    v = r.get("tta_views")
    n = (len(v) if v and not isinstance(v[0], list) else
         "/".join(str(len(x or [])) for x in v) if v else "?")
    return f"TTA on ({n} views)"


def _short(values) -> str:
    if values is None:
        return "none"
    shown = ", ".join(f"{x:g}" for x in values[:4])
    return f"[{shown}{', ...' if len(values) > 4 else ''}]"


def differences(before: dict, now: dict) -> list[str]:
    """What differs between the record of a CSV and this command's, in words."""
    out = []
    if before.get("digest") != now["digest"]:
        out.append(f"another model ({before.get('model')}, {before.get('kind')}; now "
                   f"{now['model']}, {now['kind']})")
    if (before.get("tta"), before.get("tta_views")) != (now["tta"], now["tta_views"]):
        out.append(f"{_tta_words(before)} (now {_tta_words(now)})")
    if before.get("inputs") != now["inputs"]:
        def size(r):
            return ", ".join(f"{s} px {how}" for s, how in r.get("inputs") or []) or "?"
        out.append(f"test size {size(before)} (now {size(now)})")
    if before.get("thresholds") != now["thresholds"]:
        out.append(f"thresholds {_short(before.get('thresholds'))} (now "
                   f"{_short(now['thresholds'])})")
    return out


class CsvSink:
    """predictions written into OUT.part as they come, flushed per batch; `finish` renames it
    to OUT. With `resume`, the rows already in OUT.part (or in OUT) are kept and `done` holds
    their paths. `record` (see `record`) is written beside OUT as OUT.meta.json; a resume
    under another record is refused before anything is touched."""

    def __init__(self, out: Path, columns: list[str], resume: bool, record: dict | None = None):
        self.out, self.columns, self.record = Path(out), columns, record
        self.part = self.out.with_name(self.out.name + ".part")
        self.meta = self.out.with_name(self.out.name + RECORD)
        self.done: set[str] = set()
        self.rows = 0
        self.unrecorded = False
        source = self.part if self.part.exists() else self.out if self.out.exists() else None
        if resume and source is not None and self._read_back(source):
            if source == self.out:
                os.replace(self.out, self.part)   # finished earlier: add the files not in it
            self.f = open(self.part, "a", newline="")
            if self.unrecorded:
                self._write_record()
        else:
            self.f = open(self.part, "w", newline="")
            csv.writer(self.f, lineterminator="\n").writerow(columns)
            self.f.flush()
            self._write_record()   # after the part file: a kill between leaves a refusal, not a mix

    def _write_record(self) -> None:
        if self.record is None:
            return
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=1))
        os.replace(tmp, self.meta)

    def _check_record(self, source: Path) -> None:
        """Refuse rows another model or setting wrote (one line naming what differs)."""
        if self.record is None:
            return
        try:
            before = json.loads(self.meta.read_text())
        except FileNotFoundError:
            self.unrecorded = True
            print(f"warning: --resume: {source} has no record of the model and options that "
                  f"wrote it (no {self.meta.name}: an older clfapp wrote it); its columns match, "
                  "so its rows are kept as they are", file=sys.stderr)
            return
        except (OSError, ValueError) as e:
            raise UsageError(f"--resume: {self.meta} cannot be read ({e}); leave out --resume to "
                             "predict every file again")
        diff = differences(before if isinstance(before, dict) else {}, self.record)
        if diff:
            raise UsageError(f"--resume: {source} was written with {'; '.join(diff)}; resume "
                             "with the same model and options, or leave out --resume")

    def _read_back(self, source: Path) -> bool:
        """Load the paths already written in `source`, once its header and record are checked;
        False when not even the header got written."""
        with open(source, "rb") as f:
            data = f.read()
        end = data.rfind(b"\n") + 1  # a row cut short by the kill is dropped
        if end == 0:
            return False
        reader = csv.reader(io.StringIO(data[:end].decode("utf-8", errors="replace"), newline=""))
        first = next(reader)
        if first != self.columns:
            raise UsageError(f"--resume: {source} has other columns ({', '.join(first[:4])}, "
                             "...) than this model and --top-k write; resume with the same "
                             "run and options, or leave out --resume")
        self._check_record(source)
        if end < len(data):
            with open(source, "rb+") as f:
                f.truncate(end)
        for row in reader:
            if row:
                self.done.add(row[0])
                self.rows += 1
        return True

    def write(self, df) -> None:
        df.to_csv(self.f, header=False, index=False, lineterminator="\n")
        self.f.flush()
        self.rows += len(df)

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()

    def discard(self) -> None:
        """Nothing was predicted: remove the part file and its record."""
        self.close()
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def finish(self) -> None:
        self.close()
        os.replace(self.part, self.out)


@dataclass
class Throughput:
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run(predictor, files: list[str], sink: CsvSink, tta: bool = False, bs: int = 64,
        workers: int = 0, top_k: int = 3, threshold: float | None = None,
        progress: bool = True) -> Throughput:
    """Classify `files` into `sink`, batch by batch, with a progress bar saying images/s."""
    from fastprogress.fastprogress import progress_bar

    from . import predict as pr
    t0 = time.perf_counter()
    written = 0
    bar = progress_bar(range(len(files))) if progress and len(files) > 3 * bs else None
    if bar is not None:
        bar.update(0)
    for idx, probs in pr.batches(predictor, files, tta, bs, workers):
        sink.write(rows_of(predictor, [files[i] for i in idx], probs, top_k, threshold))
        written += len(idx)
        if bar is not None:
            bar.comment = f"{written / max(time.perf_counter() - t0, 1e-9):.0f} images/s"
            bar.update(int(idx[-1]) + 1)
    if bar is not None and bar.last_v is not None:
        bar.update(len(files))
    skipped = len(files) - written
    if skipped:
        print(f"warning: {skipped} unreadable image(s) skipped", file=sys.stderr)
    if files and not written and not sink.rows:
        sink.discard()
        raise UsageError("none of the images could be read")
    return Throughput(written, time.perf_counter() - t0)
