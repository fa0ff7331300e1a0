"""The building blocks of a report page, as plain data for the templates to draw.

A section's body is a list of blocks (dicts with a "kind"): paragraphs, notes, headings, tables,
pictures, grids of captioned thumbnails, preformatted text and bullet lists. They hold only text
and numbers, never HTML: templates/blocks.html draws each kind, and Jinja2's autoescape escapes
every value, so a class, file or run name holding `<`, `"`, `&` or `'` is shown as written and
cannot break or inject into the page. Nothing is marked safe: a picture's `src` is a data URI
(base64 PNG, `data_uri`) of bytes clfapp drew itself, which escaping leaves unchanged.

Rich text (a paragraph, a heading, a caption) is a list of spans, (style, text) pairs: style ""
is plain text, "b" bold, "code" code, "good"/"bad" coloured, "br" a line break (text unused).
"""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np

Span = tuple[str, str]
BR: Span = ("br", "")


def section(sid: str, heading_text: str, body: list[dict]) -> dict:
    """One section of a page (templates/report.html): its id (stable: the nav, links and
    tests use it), its heading and its blocks."""
    return {"id": sid, "heading": heading_text, "blocks": list(body)}


def spans(*parts) -> list[Span]:
    """Rich text from plain strings (plain text) and (style, text) pairs."""
    return [("", p) if isinstance(p, str) else tuple(p) for p in parts]


def para(*parts, cls: str = "") -> dict:
    """A paragraph of rich text (see `spans`); `cls` is its CSS class ("note", "bad")."""
    return {"kind": "p", "spans": spans(*parts), "cls": cls}


def note(text: str) -> dict:
    """A grey, italic remark: why a section has nothing to show."""
    return para(text, cls="note")


def heading(level: int, *parts) -> dict:
    """A heading of rich text; level 3 under a section's own (2)."""
    return {"kind": "h", "level": level, "spans": spans(*parts)}


def pre(text: str) -> dict:
    """Text shown as it is, line by line, in a fixed-width font (a config file)."""
    return {"kind": "pre", "text": text}


def bullets(items: list[str]) -> dict:
    """A bulleted list of plain lines."""
    return {"kind": "ul", "lines": list(items)}


def table(header: list, rows: list[list]) -> dict:
    """A table of values: numbers are formatted (`fmt`) and right-aligned, text left-aligned."""
    return {"kind": "table", "header": [str(h) for h in header],
            "rows": [[{"text": fmt(v), "numeric": _numeric(v)} for v in r] for r in rows]}


def data_uri(png: bytes) -> str:
    """An embeddable src for PNG bytes (the page carries its pictures: no files, no network)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(src: str, alt: str, style: str = "") -> dict:
    """A full-width picture (a plot) from a data URI."""
    return {"kind": "img", "src": src, "alt": alt, "style": style}


def image_file(path: Path, alt: str, style: str = "") -> list[dict]:
    """[the picture of a PNG file, embedded], or [] when the file does not exist (a list, so a
    section can add it whether or not the plot was drawn)."""
    path = Path(path)
    return [image(data_uri(path.read_bytes()), alt, style)] if path.is_file() else []


def figure(srcs: list[str], caption: list[Span], wide: bool = False) -> dict:
    """Thumbnails (data URIs) side by side over a caption of rich text."""
    return {"kind": "figure", "srcs": list(srcs), "caption": caption, "wide": wide}


def grid(items: list[dict]) -> dict:
    """Blocks (figures, pictures) in rows that wrap."""
    return {"kind": "grid", "members": list(items)}


def fmt(v) -> str:
    """A table cell's text: 4 decimals, small values (learning rates) in e-notation, n/a for
    missing or not finite."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (float, np.floating)):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"    # learning rates
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _numeric(v) -> bool:
    if isinstance(v, (int, float, np.number)) or v is None:
        return True
    return bool(re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?|n/a", str(v).strip()))


# ---- markdown ----------------------------------------------------------------------------

def from_markdown(lines) -> list[dict]:
    """Blocks of the little markdown report.md's extra lines use: headings, pipe tables,
    paragraphs, `code`, **bold**."""
    out, rows = [], []

    def flush():
        cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows
                 if not re.fullmatch(r"\|?[\s|:-]+\|?", r.strip())]
        if cells:
            out.append(table(cells[0], cells[1:]))
        rows.clear()
    for line in lines:
        s = str(line).strip()
        if s.startswith("|"):
            rows.append(s)
            continue
        flush()
        if not s:
            continue
        if s.startswith("#"):
            level = min(len(s) - len(s.lstrip("#")) + 1, 4)
            out.append(heading(level, *inline(s.lstrip("#").strip())))
        else:
            out.append(para(*inline(s)))
    flush()
    return out


def inline(text: str) -> list[Span]:
    """Spans of markdown text: `code` and **bold**, the rest plain."""
    out = []
    for k, p in enumerate(re.split(r"(`[^`]+`|\*\*[^*]+\*\*)", text)):
        if k % 2 == 0:                 # re.split puts the matches at the odd places
            if p:
                out.append(("", p))
        elif p.startswith("`"):
            out.append(("code", p[1:-1]))
        else:
            out.append(("b", p[2:-2]))
    return out
