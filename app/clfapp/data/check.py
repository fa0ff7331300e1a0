"""What is wrong with a dataset, found before an hour is spent training on it.

Two levels:
  * `quick(cfg)`: the items as `fit` will see them (scan, the split clfapp will make), files a
    label CSV names that do not exist, classes (labels) too small for the split. It reads no
    image, so `fit` runs it first (`before_fit`) at the cost of listing the files.
  * `full(cfg)`: quick, then every file read once in parallel threads: content hash (exact
    duplicates, and duplicates that sit on both sides of the train/valid/test boundary, which
    inflate the validation figure), a full decode (zero-byte, truncated, not an image), the
    format against the file extension, and histograms of sizes and colour modes.

A finding is an "error" when `fit` would refuse the data (it exits 2 on it) and a "warning"
otherwise (fit goes on: unreadable files are skipped with a warning naming them).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import classes_of, dataset_root, is_multi_label, label_matrix, scan, split_labels, splits
from ..config import Config
from ..errors import UsageError

# PIL format name → the extensions a file of that format is expected to carry.
FORMAT_EXTENSIONS = {"JPEG": {".jpg", ".jpeg"}, "MPO": {".jpg", ".jpeg"}, "PNG": {".png"},
                     "BMP": {".bmp"}, "GIF": {".gif"}, "TIFF": {".tif", ".tiff"},
                     "WEBP": {".webp"}}
EXAMPLES = 5          # paths shown per finding in the human-readable report
PROGRESS_FROM = 200   # files: below this the check is quick enough to need no progress


@dataclass
class Finding:
    level: str        # "error": fit refuses the data; "warning": fit goes on
    kind: str         # unknown_split | missing_files | no_split | single_image | too_small | no_labels | unreadable | wrong_extension | duplicates | cross_split
    message: str
    paths: list = field(default_factory=list)


@dataclass
class Report:
    path: str
    layout: str                     # folders | split folders | csv | file names
    multi_label: bool
    images: int
    classes: list
    counts: dict                    # class (label) → {split: images}
    findings: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)       # "WxH" → images (the most common 10)
    short_side: dict = field(default_factory=dict)  # min / median / max
    modes: dict = field(default_factory=dict)       # PIL mode → images
    formats: dict = field(default_factory=dict)     # PIL format → images
    exif_rotated: int = 0
    unreadable: list = field(default_factory=list)  # {"path", "reason"}
    duplicates: list = field(default_factory=list)  # groups of paths with identical bytes
    cross_split: list = field(default_factory=list) # groups of {"path", "split"} across splits
    seconds: float = 0.0
    files_read: bool = False

    @property
    def errors(self) -> list:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list:
        return [f for f in self.findings if f.level == "warning"]

    def to_json(self) -> dict:
        out = asdict(self)
        out["errors"], out["warnings"] = len(self.errors), len(self.warnings)
        return out


# --- quick: no image is read ------------------------------------------------------------------

def _layout(cfg: Config, items: pd.DataFrame) -> str:
    root = Path(cfg.data.path).expanduser()
    if root.is_file() or cfg.data.labels.startswith("csv:"):
        return "csv"
    if cfg.data.labels.startswith("name:"):
        return "file names"
    return "split folders" if items["split"].notna().any() else "folders"


def _split(cfg: Config, items: pd.DataFrame, multi_label: bool, iterative: bool) -> pd.DataFrame:
    """The split `data.load` makes (same call, same seed); None-split rows for a multi-label
    set when `iterative` is False (the iterative split costs seconds on large sets)."""
    d = cfg.data
    if multi_label and not iterative and not items["split"].notna().any():
        return items.assign(split=None)
    y = label_matrix(items["labels"], classes_of(items, d.label_delim), d.label_delim) if multi_label else None
    items = splits.assign(items, d.split, d.valid_pct, d.seed, y, root=dataset_root(d), test_pct=d.test_pct)
    if d.splits_from:
        items = splits.reuse(items, d.splits_from)
    return items


def _counts(items: pd.DataFrame, classes: list, multi_label: bool, delim: str) -> dict:
    parts = items["split"].fillna("all")
    out = {c: {} for c in classes}
    if multi_label:
        for text, part in zip(items["labels"], parts):
            for label in split_labels(text, delim):
                out[label][part] = out[label].get(part, 0) + 1
    else:
        for (label, part), n in items.groupby([items["label"], parts]).size().items():
            out[str(label)][part] = int(n)
    return out


def _too_small(counts: dict, cfg: Config, split_known: bool, given_split: bool) -> list[Finding]:
    """Classes (labels) the split cannot serve: one image (no validation image, or for a label
    no positive on one side), none in training, none in validation."""
    found = []
    single = [c for c, n in counts.items() if sum(n.values()) == 1]
    if single:
        found.append(Finding("warning", "single_image",
                             f"{len(single)} class(es) have a single image: it stays in training and "
                             f"the class is never validated: {', '.join(single[:EXAMPLES])}", single))
    if cfg.data.test_pct > 0 and not given_split:
        few = [c for c, n in counts.items() if 1 < sum(n.values()) < 3]
        if few:
            found.append(Finding("warning", "too_small",
                                 f"{len(few)} class(es) have fewer than 3 images and get no test image: "
                                 f"{', '.join(few[:EXAMPLES])}", few))
    if split_known:
        no_train = [c for c, n in counts.items() if not n.get("train") and sum(n.values()) > 0]
        no_valid = [c for c, n in counts.items() if not n.get("valid") and sum(n.values()) > 1]
        if no_train:
            found.append(Finding("warning", "too_small",
                                 f"{len(no_train)} class(es) have no training image, so the model "
                                 f"never learns them: {', '.join(no_train[:EXAMPLES])}", no_train))
        if no_valid:
            found.append(Finding("warning", "too_small",
                                 f"{len(no_valid)} class(es) have no validation image (not measured): "
                                 f"{', '.join(no_valid[:EXAMPLES])}", no_valid))
    return found


def quick(cfg: Config, iterative: bool = True) -> tuple[pd.DataFrame, Report]:
    """The items with their split, and the findings that need no image read.

    Refusals that `data.scan` makes itself (no images, one class, a CSV reaching outside the
    dataset folder, ...) are raised as they are: a UsageError; a CSV split value it does not
    know is an error finding (its rows counted as having no split)."""
    t0 = time.perf_counter()
    unknown_split: dict = {}  # a CSV split value clfapp does not know: a finding here, not a refusal
    items = scan(cfg.data, unknown_split)
    multi = is_multi_label(items)
    delim = cfg.data.label_delim
    layout = _layout(cfg, items)
    findings = []
    if unknown_split:
        findings.append(Finding("error", "unknown_split", unknown_split["message"],
                                unknown_split["paths"]))
    exists = items["path"].map(os.path.exists) if layout == "csv" else pd.Series(True, index=items.index)
    missing = items.loc[~exists, "path"].tolist()
    if missing:
        level = "error" if len(missing) == len(items) else "warning"
        where = dataset_root(cfg.data)
        tail = (f"; paths are read relative to {where} (or its images/ folder)" if level == "error"
                else "; they are skipped")
        findings.append(Finding(level, "missing_files",
                                f"{'all ' if level == 'error' else ''}{len(missing)} of {len(items)} file(s) "
                                f"named in the label file do not exist, e.g. {missing[0]}{tail}", missing))
    present = items[exists.to_numpy()].reset_index(drop=True)
    classes = classes_of(items, delim)
    given_split = items["split"].notna().any()
    if len(present):
        present = _split(cfg, present, multi, iterative)
    split_known = bool(present["split"].notna().any()) if len(present) else False
    if split_known and not ((present["split"] == "train").any() and (present["split"] == "valid").any()):
        findings.append(Finding("error", "no_split",
                                "the split leaves no training or no validation images; add images "
                                "or change data.valid_pct"))
    counts = _counts(present, classes, multi, delim)
    findings += _too_small(counts, cfg, split_known, given_split)
    if multi:
        unlabelled = int(sum(1 for t in items["labels"] if not split_labels(t, delim)))
        if unlabelled:
            findings.append(Finding("warning", "no_labels", f"{unlabelled} image(s) carry no label "
                                    "(kept: an empty label set is a valid item)"))
    report = Report(str(cfg.data.path), layout, multi, len(items), classes, counts, findings)
    report.seconds = time.perf_counter() - t0
    return present, report


def before_fit(cfg: Config) -> Report | None:
    """The quick check `fit` runs before it makes a run folder: warnings printed, errors
    refused (UsageError, exit 2). Messages that `data.load` prints again later (the split's,
    the label file's) are held back here, so each is said once."""
    if cfg.data.sample and not Path(cfg.data.path).expanduser().exists():
        return None  # an embedded sample, written by fit itself
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        # multi-label: no iterative split here (seconds on large sets); fit makes it once
        _, report = quick(cfg, iterative=False)
    for f in report.errors:
        raise UsageError(f"{f.message} (see `clfapp data check`)")
    for f in report.warnings:
        # data.load says these itself: each missing file as it skips it, single-image classes
        if f.kind not in ("missing_files", "single_image"):
            print(f"warning: {f.message}", file=sys.stderr, flush=True)
    return report


# --- full: every file read once ---------------------------------------------------------------

@dataclass
class _FileInfo:
    digest: str = ""
    size: tuple | None = None
    mode: str = ""
    format: str = ""
    rotated: bool = False
    problem: str = ""       # why it cannot be used ("" = fine)


def inspect(path: str) -> _FileInfo:
    """Hash and decode one file (thread-safe: touches no global state)."""
    from PIL import Image, UnidentifiedImageError

    info = _FileInfo()
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        info.problem = f"cannot be read: {e.strerror or e}"
        return info
    if not raw:
        info.problem = "empty file (0 bytes)"
        return info
    info.digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            info.size, info.mode, info.format = img.size, img.mode, img.format or ""
            info.rotated = img.getexif().get(0x0112, 1) not in (1, None)
            img.load()
    except UnidentifiedImageError:
        info.problem = "not an image"
    except Image.DecompressionBombError as e:
        info.problem = f"too large to decode safely ({e})"
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        text = str(e)
        info.problem = "truncated" if "truncat" in text.lower() else f"cannot be decoded: {text.splitlines()[0] if text else type(e).__name__}"
    return info


def _read_all(paths: list[str], threads: int, progress: bool) -> list[_FileInfo]:
    results: list = [None] * len(paths)
    show = progress and len(paths) >= PROGRESS_FROM
    step = max(1, len(paths) // 10)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:  # reading and hashing release the GIL
        for i, info in enumerate(pool.map(inspect, paths)):
            results[i] = info
            done = i + 1
            if show and (done % step == 0 or done == len(paths)):
                print(f"checking images: {100 * done // len(paths)}% ({done}/{len(paths)}, "
                      f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    return results


def full(cfg: Config, threads: int | None = None, progress: bool = True) -> Report:
    """Every finding of `quick`, plus what reading each file once tells (module docstring)."""
    import warnings

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the split's own warnings: findings here
        items, report = quick(cfg, iterative=True)
    paths = items["path"].tolist()
    threads = threads or max(2, min(8, 2 * (os.cpu_count() or 1)))
    with warnings.catch_warnings():  # EXIF chatter, decompression-bomb size warnings
        warnings.simplefilter("ignore")
        infos = _read_all(paths, threads, progress)
    report.files_read = True
    sizes, modes, formats = Counter(), Counter(), Counter()
    sides, wrong_ext = [], []
    by_digest = defaultdict(list)
    for p, info in zip(paths, infos):
        if info.problem:
            report.unreadable.append({"path": p, "reason": info.problem})
            if info.problem.startswith("empty") or not info.digest:
                continue
        by_digest[info.digest].append(p)
        if info.size:
            sizes[f"{info.size[0]}x{info.size[1]}"] += 1
            sides.append(min(info.size))
            modes[info.mode] += 1
            formats[info.format] += 1
            report.exif_rotated += info.rotated
            expected = FORMAT_EXTENSIONS.get(info.format)
            if expected and Path(p).suffix.lower() not in expected:
                wrong_ext.append({"path": p, "format": info.format})
    report.sizes = dict(sizes.most_common(10))
    if sides:
        report.short_side = {"min": int(min(sides)), "median": int(np.median(sides)), "max": int(max(sides))}
    report.modes, report.formats = dict(modes.most_common()), dict(formats.most_common())
    split_of = dict(zip(items["path"], items["split"].fillna("")))
    report.duplicates = sorted((sorted(g) for g in by_digest.values() if len(g) > 1), key=lambda g: g[0])
    for group in report.duplicates:
        parts = {split_of.get(p, "") for p in group}
        if len(parts - {""}) > 1:
            report.cross_split.append([{"path": p, "split": split_of.get(p, "")} for p in group])
    _file_findings(report, wrong_ext, items, cfg)
    report.seconds = time.perf_counter() - t0
    return report


def _file_findings(report: Report, wrong_ext: list, items: pd.DataFrame, cfg: Config) -> None:
    if report.unreadable:
        why = Counter(u["reason"] if not u["reason"].startswith("cannot") else "cannot be decoded"
                      for u in report.unreadable)
        report.findings.append(Finding(
            "warning", "unreadable",
            f"{len(report.unreadable)} unreadable file(s) ({', '.join(f'{n} {r}' for r, n in why.most_common())}); "
            "fit skips them", [u["path"] for u in report.unreadable]))
    if wrong_ext:
        report.findings.append(Finding(
            "warning", "wrong_extension",
            f"{len(wrong_ext)} file(s) whose content is another format than their extension says "
            f"(read by content; rename them), e.g. {wrong_ext[0]['path']} is {wrong_ext[0]['format']}",
            [w["path"] for w in wrong_ext]))
    if report.duplicates:
        extra = sum(len(g) - 1 for g in report.duplicates)
        label_col = "labels" if report.multi_label else "label"
        label_of = dict(zip(items["path"], items[label_col]))
        clash = [g for g in report.duplicates if len({str(label_of.get(p)) for p in g}) > 1]
        note = f"; {len(clash)} of them with different labels" if clash else ""
        report.findings.append(Finding(
            "warning", "duplicates",
            f"{len(report.duplicates)} group(s) of identical files ({extra} redundant cop"
            f"{'y' if extra == 1 else 'ies'}){note}", [g[0] for g in report.duplicates]))
    if report.cross_split:
        report.findings.append(Finding(
            "warning", "cross_split",
            f"{len(report.cross_split)} identical image(s) sit on both sides of the train/valid/test "
            "boundary: the validation (test) figure is inflated by images the model trained on; "
            "remove the copies", [g[0]["path"] for g in report.cross_split]))


# --- text -----------------------------------------------------------------------------------

def _short(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def render(report: Report, root: Path) -> list[str]:
    """The human-readable report, one line per list entry."""
    kind = "multi-label" if report.multi_label else "single-label"
    lines = [f"data check of {report.path}: {report.layout}, {kind}, {len(report.classes)} "
             f"{'labels' if report.multi_label else 'classes'}, {report.images} images "
             f"({report.seconds:.1f} s)"]
    parts = [p for p in ("train", "valid", "test", "all")
             if any(p in n for n in report.counts.values())]
    width = max([len(str(c)) for c in report.classes] + [5])
    lines.append(f"images per {'label' if report.multi_label else 'class'}: "
                 + " / ".join(parts))
    for c in report.classes:
        n = report.counts.get(c, {})
        lines.append(f"  {str(c):<{width}}  " + "  ".join(f"{n.get(p, 0):>6}" for p in parts))
    if report.files_read:
        sizes = ", ".join(f"{s} {n}" for s, n in list(report.sizes.items())[:5])
        more = f" (+{len(report.sizes) - 5} more sizes)" if len(report.sizes) > 5 else ""
        ss = report.short_side
        lines.append(f"sizes: {sizes}{more}" + (f"; short side min {ss['min']}, median {ss['median']}, "
                                                  f"max {ss['max']}" if ss else ""))
        lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in report.modes.items())
                     + "; formats: " + ", ".join(f"{m} {n}" for m, n in report.formats.items())
                     + (f"; {report.exif_rotated} rotated by EXIF (turned upright when read)"
                        if report.exif_rotated else ""))
        lines.append(f"unreadable: {len(report.unreadable) or 'none'}")
        for u in report.unreadable[:EXAMPLES]:
            lines.append(f"  {_short(u['path'], root)}: {u['reason']}")
        lines.append(f"exact duplicates: {len(report.duplicates) or 'none'}"
                     + (" group(s)" if report.duplicates else ""))
        for g in report.duplicates[:EXAMPLES]:
            lines.append("  " + " = ".join(_short(p, root) for p in g))
        lines.append(f"duplicates across train/valid/test: {len(report.cross_split) or 'none'}")
        for g in report.cross_split[:EXAMPLES]:
            lines.append("  " + " = ".join(f"{_short(e['path'], root)} ({e['split']})" for e in g))
    for f in report.findings:
        lines.append(f"{f.level}: {f.message}")
    verdict = ("fit would refuse this data" if report.errors else
               f"ok for fit ({len(report.warnings)} warning(s))" if report.warnings else "ok")
    lines.append(f"verdict: {verdict}")
    return lines
