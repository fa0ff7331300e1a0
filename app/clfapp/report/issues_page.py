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
from .blocks import BR, data_uri, figure, grid, heading, note, para, section, table
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


def _shown(path: str, root: Path | None) -> str:
    """A path as the page names it: relative to the data's folder when inside it."""
    if root is not None:
        try:
            return Path(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return Path(path).name


def _caption(row, delim: str, multi_label: bool, root: Path | None) -> list:
    name = _shown(row.path, root)
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
          delim: str = " ", seconds: float = 0.0, root: Path | None = None,
          name: str | None = None) -> Path:
    """FOLDER/issues.html of the issues table (infer/issues.COLUMNS; given and suggested as label texts, a
    multi-label set joined by `delim`); `described`: summary
    lines (name → value) shown first; `root`: the data's folder (paths are shown relative to
    it); `name`: the folder's name as the footer gives it (FOLDER may be a .part folder)."""
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
            figs.append((row.group, figure([src], _caption(row, delim, multi_label, root))))
        body = [para(f"{len(rows)} image(s). {SAID[kind]}")]
        if len(rows) > MAX_SHOWN:
            body.append(note(f"the first {MAX_SHOWN} are shown; issues.csv lists all {len(rows)}"))
        if unread:
            body.append(note(f"{len(unread)} image(s) could not be read for a thumbnail, e.g. {unread[0]}"))
        if kind == "near_duplicate":   # one row of thumbnails per set
            sets = rows.groupby("group", sort=False)["split"].agg(lambda v: (len(v), sorted(set(v))))
            for group, (n, splits) in sets.items():
                members = [f for g, f in figs if g == group]
                if members:
                    across = f", across {' and '.join(splits)}" if len(splits) > 1 else ""
                    body += [heading(3, f"{group}: {n} images{across}"), grid(members)]
        else:
            body.append(grid([f for _, f in figs]))
        sections.append(section(kind.replace("_", "-"), title, body))
    page = templates.render("report.html", title="Data issues", sections=sections,
                            folder_name=name or Path(folder).name, stamp=time.strftime("%Y-%m-%d %H:%M"),
                            seconds=seconds)
    atomic_write(Path(folder) / FILE, page)
    return Path(folder) / FILE
