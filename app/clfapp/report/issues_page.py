"""issues.html of `clfapp data issues`: each flagged image's thumbnail with its given and
suggested labels and its score, grouped by kind (label issues, near-duplicates, outliers).

Drawn with the report templates (report.html over page.html, the blocks of report/blocks.py):
one self-contained file, thumbnails embedded as base64 PNGs, every name escaped. Written
through a temporary file (html.atomic_write)."""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..data import split_labels
from .blocks import BR, data_uri, figure, grid, note, para, section, table
from .html import _png_of, atomic_write

FILE = "issues.html"
THUMB = 96          # thumbnail side in pixels
MAX_SHOWN = 300     # thumbnails per kind; issues.csv lists them all
TITLES = {"label": "Label issues", "near_duplicate": "Near-duplicates", "outlier": "Outliers"}
SAID = {
    "label": "Images whose given label(s) the out-of-fold predictions contradict (cleanlab), most "
             "suspicious first; score = 1 - cleanlab's label quality.",
    "near_duplicate": "Sets of images that are copies of one picture (resized, recompressed, "
                      "slightly cropped or identical), within and across splits; score = the "
                      "similarity to the closest copy.",
    "outlier": "Images unlike the rest of the data (pretrained features, mean distance to the "
               "nearest images), highest score first.",
}


def _thumb(path: str) -> str | None:
    from ..data import images
    px = images.try_read(path, THUMB, "squish")
    return None if px is None else data_uri(_png_of(px, THUMB))


def _caption(row, delim: str, multi_label: bool) -> list:
    name = Path(row.path).name
    rich = [("b", name), BR, ("", f"{row.split or '-'}")]
    if row.kind == "label":
        rich += [BR, ("", f"given: {row.given or '(none)'}"), BR,
                 ("good", f"suggested: {row.suggested or '(none)'}")]
        if multi_label:
            given, sugg = set(split_labels(row.given, delim)), set(split_labels(row.suggested, delim))
            wrong, present = sorted(given - sugg), sorted(sugg - given)
            if wrong:
                rich += [BR, ("bad", f"looks wrong: {' '.join(wrong)}")]
            if present:
                rich += [BR, ("bad", f"looks present: {' '.join(present)}")]
    else:
        rich += [BR, ("", f"label: {row.given or '(none)'}")]
        if row.kind == "near_duplicate":
            rich += [BR, ("", f"set {row.group}")]
    rich += [BR, ("", f"score {row.score:.3f}")]
    return rich


def write(folder: Path, issues: pd.DataFrame, described: dict, multi_label: bool = False,
          delim: str = " ", seconds: float = 0.0) -> Path:
    """FOLDER/issues.html of the issues table (infer/issues.COLUMNS; given and suggested as label texts, a
    multi-label set joined by `delim`); `described`: summary
    lines (name → value) shown first."""
    from . import templates
    sections = [section("summary", "Summary", [
        table(["", ""], [[k, v] for k, v in described.items()]),
        para("Nothing was changed in the data; issues.csv lists every row shown here.")])]
    for kind, title in TITLES.items():
        rows = issues[issues["kind"] == kind]
        if not len(rows):
            sections.append(section(kind.replace("_", "-"), title, [note(f"none found. {SAID[kind]}")]))
            continue
        figs, unread = [], []
        for row in rows.head(MAX_SHOWN).itertuples(index=False):
            src = _thumb(row.path)
            if src is None:
                unread.append(row.path)
                continue
            figs.append(figure([src], _caption(row, delim, multi_label)))
        body = [para(f"{len(rows)} image(s). {SAID[kind]}")]
        if len(rows) > MAX_SHOWN:
            body.append(note(f"the first {MAX_SHOWN} are shown; issues.csv lists all {len(rows)}"))
        if unread:
            body.append(note(f"{len(unread)} image(s) could not be read for a thumbnail, e.g. {unread[0]}"))
        body.append(grid(figs))
        sections.append(section(kind.replace("_", "-"), title, body))
    page = templates.render("report.html", title="Data issues", sections=sections,
                            folder_name=Path(folder).name, stamp=time.strftime("%Y-%m-%d %H:%M"),
                            seconds=seconds)
    atomic_write(Path(folder) / FILE, page)
    return Path(folder) / FILE
