"""Prediction over any number of files: rows written and flushed batch by batch, resumable.

`predict` classifies batch after batch (infer/predict.py `batches`) and appends each batch's
rows to OUT.part, flushed, so memory holds a few batches whatever the number of files and an
interruption (Ctrl-C, a kill, a crash) loses at most the batch in flight. The finished file is
renamed to OUT; `--resume` reads the rows of OUT.part (or of a finished OUT) back, drops a
last line cut short by the kill, and only the files not in it are classified: each file is in
the output once.
"""
from __future__ import annotations

import csv
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError


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


class CsvSink:
    """predictions written into OUT.part as they come, flushed per batch; `finish` renames it
    to OUT. With `resume`, the rows already in OUT.part (or in OUT) are kept and `done` holds
    their paths."""

    def __init__(self, out: Path, columns: list[str], resume: bool):
        self.out, self.columns = Path(out), columns
        self.part = self.out.with_name(self.out.name + ".part")
        self.done: set[str] = set()
        self.rows = 0
        if resume and not self.part.exists() and self.out.exists():
            os.replace(self.out, self.part)   # finished earlier: add the files not in it
        if resume and self.part.exists() and self._read_back():
            self.f = open(self.part, "a", newline="")
        else:
            self.f = open(self.part, "w", newline="")
            csv.writer(self.f, lineterminator="\n").writerow(columns)
            self.f.flush()

    def _read_back(self) -> bool:
        """Load the paths already written; False when not even the header got written."""
        with open(self.part, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1  # a row cut short by the kill is dropped
            if end < len(data):
                f.truncate(end)
        if end == 0:
            return False
        with open(self.part, newline="") as f:
            reader = csv.reader(f)
            first = next(reader)
            if first != self.columns:
                raise UsageError(f"--resume: {self.part} has other columns ({', '.join(first[:4])}, "
                                 "...) than this model and --top-k write; resume with the same "
                                 "run and options, or leave out --resume")
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
        sink.close()
        sink.part.unlink(missing_ok=True)
        raise UsageError("none of the images could be read")
    return Throughput(written, time.perf_counter() - t0)
