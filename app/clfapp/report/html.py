"""report.html: one self-contained page per run, evaluation, ensemble or comparison.

Every picture is embedded as a base64 PNG data URI and the styles are inline, so the file
opens from disk, mailed or copied anywhere, with no network. It is written atomically (a
temporary file, then os.replace): a reader never sees half a page.

This module computes what the page shows (figures, tables, captions) as plain data, the blocks
of report/blocks.py; the Jinja2 templates in report/templates/ draw it as HTML, escaping every
value (a class or file name holding `<`, `"` or `&` is shown as written).

Sections (their `id`s are stable, tests and links use them): summary, config, data, curves,
schedule, lr-find, metrics, confusion, roc-pr, per-class, top-losses, confused, gradcam, and
thresholds for multi-label models. A section that has nothing to show says why (e.g. an
evaluation has no training curves). The pictures it draws are also saved under plots/, and
`write` returns the markdown lines that report.md adds for them.

What needs the model's probabilities (ROC and PR curves, top losses, the confused pairs of
multi-label models, Grad-CAM, per-label threshold curves) comes from an `Evidence`: the
predictions on the items the figures were measured on (for a run: its validation split).
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blocks import (BR, bullets, data_uri, figure, from_markdown, grid, heading, image_file, note,
                     para, pre, section, table)
from .plots import pyplot, save

FILE = "report.html"
PAGE_DPI = 90   # the page's own figures: smaller than the run's plots (100), embedded in it
TOP_LOSSES = 12
GRADCAM_EACH = 4          # correct and wrong images explained
THUMB = 128               # thumbnail side in pixels
MAX_LEGEND = 15           # classes named in a curve's legend; beyond, the table has the figures

SECTIONS = {
    "summary": "Summary", "config": "Configuration", "data": "Data", "curves": "Training curves",
    "schedule": "Learning rate and momentum", "lr-find": "LR finder", "metrics": "Metrics",
    "confusion": "Confusion matrix", "roc-pr": "ROC and precision-recall curves",
    "per-class": "Per class", "top-losses": "Top losses", "confused": "Most confused pairs",
    "gradcam": "Grad-CAM", "thresholds": "Thresholds",
}


@dataclass
class Evidence:
    """A model's predictions on labelled items: what the report's curves and images need."""
    probs: np.ndarray                 # N x C probabilities
    y: np.ndarray                     # N class indices, or N x C boolean label matrix
    classes: list[str]
    multi_label: bool
    names: list[str] | None = None    # item paths aligned with probs (captions, decoding)
    thresholds: np.ndarray | None = None   # multi-label decision thresholds (None: 0.5)
    pixels: np.ndarray | None = None  # N x S x S x 3 uint8 aligned with probs, else decoded
    size: int = 0                     # ... from `names` at this size and resize
    resize: str = "squish"
    predictor: object = None          # a predict.Predictor for Grad-CAM (None: not drawn)
    described: str = ""               # which items, e.g. "the validation split"

    def __post_init__(self):
        if self.names is not None and len(self.names) != len(self.probs):
            self.names = None         # unreadable images were skipped: names no longer align
        if self.thresholds is not None:  # one global threshold or one per label
            self.thresholds = np.broadcast_to(np.asarray(self.thresholds, dtype=float),
                                              (len(self.classes),)).copy()

    def decided(self) -> np.ndarray:
        """Multi-label: the N x C decisions at the thresholds."""
        t = self.thresholds if self.thresholds is not None else np.full(len(self.classes), 0.5)
        return self.probs >= np.asarray(t)

    def image(self, i: int) -> np.ndarray | None:
        if self.pixels is not None:
            return self.pixels[i]
        if self.names is None or not self.size:
            return None
        from ..data import images
        return images.try_read(self.names[i], self.size, self.resize)


def evidence_of(predictor, items, probs, y, described: str = "", threshold: float | None = None) -> Evidence:
    """Evidence from a Predictor (or an ensemble's) measured on labelled `items` (aligned with
    `probs` unless some were unreadable), at the thresholds in force (`threshold` overrides).
    Grad-CAM needs one model: not for ensembles."""
    meta = predictor.meta
    single = hasattr(predictor, "model")
    thresholds = None
    if meta.multi_label:
        from ..models.decisions import decision_thresholds
        thresholds = decision_thresholds(meta, threshold)
    size = getattr(meta, "input_size", 0) or (predictor.members[0].meta.input_size if hasattr(predictor, "members") else 0)
    resize = getattr(meta, "resize", "") or (predictor.members[0].meta.resize if hasattr(predictor, "members") else "squish")
    return Evidence(probs, y, list(meta.classes), bool(meta.multi_label), items["path"].tolist(),
                    thresholds, None, size, resize, predictor if single else None, described)


# ---- writing ----------------------------------------------------------------------------

def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace: a
    failure half-way leaves the previous file (or none), never a torn one, and no .tmp."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write(folder: Path, m: dict, classes: list[str], title: str, extra=(), evidence: Evidence | None = None,
          multi_label: bool = False, keys: tuple = (), before: dict | None = None) -> list[str]:
    """Draw the extra plots, write FOLDER/report.html; return the markdown lines report.md
    adds (tables of top losses and confused pairs, links to the new plots)."""
    t0 = time.perf_counter()
    folder = Path(folder)
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    sections = []
    md: list[str] = []
    ctx = dict(folder=folder, m=m, classes=classes, ev=evidence, multi=multi_label, keys=keys,
               before=before, md=md, extra=list(extra))
    builders = [_summary, _config, _data, _curves, _schedule, _lr_find, _metrics, _confusion,
                _roc_pr, _per_class, _top_losses, _confused, _gradcam]
    if multi_label:
        builders.append(_thresholds)
    for build in builders:
        sid = build.__name__.strip("_").replace("_", "-")   # _lr_find -> lr-find
        try:
            body = build(ctx)
        except Exception as e:  # noqa: BLE001  (the report is never why a run fails)
            print(f"warning: report.html section {sid}: {type(e).__name__}: {e}", file=sys.stderr)
            body = [note(f"could not be drawn: {type(e).__name__}: {e}")]
        sections.append(section(sid, SECTIONS[sid], body))
    _write_html(folder, title, sections, time.perf_counter() - t0)
    return md


def _write_html(folder: Path, title: str, sections: list[dict], seconds: float = 0.0) -> None:
    from . import templates
    page = templates.render("report.html", title=title, sections=sections, folder_name=Path(folder).name,
                            stamp=time.strftime("%Y-%m-%d %H:%M"), seconds=seconds)
    atomic_write(Path(folder) / FILE, page)


# ---- pictures ---------------------------------------------------------------------------

def _png_of(pixels: np.ndarray, side: int = THUMB) -> bytes:
    """A thumbnail PNG: small images are enlarged (pixel-sharp), large ones reduced."""
    from PIL import Image
    img = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if max(img.size) != side:
        resample = Image.NEAREST if max(img.size) < side else Image.BILINEAR
        img = img.resize((side, side), resample)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _thumb(pixels, caption: list, wide: bool = False) -> dict:
    """A figure of one image (or several side by side: Grad-CAM's image and map) and a caption
    (rich text, blocks.spans)."""
    imgs = pixels if isinstance(pixels, list) else [pixels]
    return figure([data_uri(_png_of(p)) for p in imgs], caption, wide)


def _grid_png(tiles: list[np.ndarray], path: Path, cols: int = 6, side: int = THUMB) -> None:
    """Tiles side by side in one PNG (report.md links it)."""
    from PIL import Image
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (side + 4), rows * (side + 4)), (255, 255, 255))
    for k, t in enumerate(tiles):
        img = Image.open(io.BytesIO(_png_of(t, side)))
        sheet.paste(img, ((k % cols) * (side + 4), (k // cols) * (side + 4)))
    sheet.save(path)


# ---- sections ---------------------------------------------------------------------------

def _summary(c) -> list[dict]:
    m, ev = c["m"], c["ev"]
    body = from_markdown(c["extra"])
    if ev is not None and ev.described:
        body.append(para(f"Curves, top losses and Grad-CAM below: on {ev.described} ({len(ev.probs)} images)."))
    if m.get("stopped"):
        body.append(para(f"Training stopped early: {m['stopped']}.", cls="bad"))
    return body


def _find(folder: Path, *names: str) -> Path | None:
    """The first of `names` in the folder, else in its parent (an eval-N inside its run)."""
    for base in (folder, folder.parent):
        for n in names:
            if (base / n).is_file():
                return base / n
    return None


def _config(c) -> list[dict]:
    f = _find(c["folder"], "config.toml", "ensemble.json")
    if f is None:
        return [note("no config.toml or ensemble.json recorded here")]
    whose = "" if f.parent == c["folder"] else f" (of the run measured, {f.parent.name})"
    return [para(("code", f.name), f"{whose}:"), pre(f.read_text())]


def _label_delim(folder: Path) -> str:
    import tomllib
    f = _find(folder, "config.toml")
    try:
        return tomllib.loads(f.read_text()).get("data", {}).get("label_delim", " ") if f else " "
    except (OSError, tomllib.TOMLDecodeError):
        return " "


def _data(c) -> list[dict]:
    import pandas as pd
    folder, classes, ev = c["folder"], c["classes"], c["ev"]
    parts = []
    f = _find(folder, "splits.csv")
    if f is not None:
        items = pd.read_csv(f, dtype=str, keep_default_na=False)
        splits = [s for s in ("train", "valid", "test") if (items["split"] == s).any()]
        sizes = {s: int((items["split"] == s).sum()) for s in splits}
        sizes_text = [x for k, (s, n) in enumerate(sizes.items())
                      for x in ([", "] if k else []) + [f"{s} ", ("b", str(n))]]
        parts.append(para("Split sizes: ", *sizes_text, " (", ("code", str(f.relative_to(f.parent.parent))), ")."))
        if "labels" in items.columns:
            delim = _label_delim(folder)
            sets = items["labels"].map(lambda t: set(x for x in t.split(delim) if x))
            rows = [[cl, *(int(sum(cl in s for s in sets[items["split"] == sp])) for sp in splits)]
                    for cl in classes]
            rows.append(["(no label)", *(int(sum(not s for s in sets[items["split"] == sp])) for sp in splits)])
            parts.append(table(["label (images with it)", *splits], rows))
        elif "label" in items.columns:
            counts = items.groupby(["label", "split"]).size().unstack(fill_value=0)
            rows = [[cl, *(int(counts.loc[cl, sp]) if cl in counts.index and sp in counts.columns else 0
                           for sp in splits)] for cl in classes]
            parts.append(table(["class", *splits], rows))
    if ev is not None:
        n = ev.y.sum(axis=0) if ev.multi_label else np.bincount(ev.y, minlength=len(ev.classes))
        parts.append(para(f"Measured on {ev.described or 'the items given'}: {len(ev.probs)} images; "
                          + ", ".join(f"{cl} {int(k)}" for cl, k in zip(ev.classes, n)) + "."))
    return parts or [note("no splits.csv and no predictions recorded here")]


def _curves(c) -> list[dict]:
    import pandas as pd
    folder = c["folder"]
    results = folder / "results.csv"
    if not results.is_file():
        return [note("no training here (results.csv is written by fit)")]
    df = pd.read_csv(results)
    return [*image_file(folder / "plots" / "curves.png", "loss and metric curves"),
            *image_file(folder / "plots" / "curves_full.png", "curves of the train+valid retraining"),
            table(list(df.columns), df.values.tolist())]


def _schedule(c) -> list[dict]:
    import pandas as pd
    folder = c["folder"]
    steps = folder / "steps.csv"
    if not steps.is_file():
        return [note("no training here (steps.csv, written by fit, has the LR and momentum of every step)")]
    df = pd.read_csv(steps)
    plt = pyplot()
    has_mom = "mom" in df and df["mom"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_mom else 1, figsize=(10 if has_mom else 5.5, 3.2), squeeze=False)
    axes = axes[0]
    axes[0].plot(df["step"], df["lr"], color="C0")
    axes[0].set_title("learning rate (last parameter group)"), axes[0].set_xlabel("step")
    if has_mom:
        axes[1].plot(df["step"], df["mom"], color="C1")
        axes[1].set_title("momentum (beta1)"), axes[1].set_xlabel("step")
    starts = df.groupby("epoch")["step"].min().tolist()[1:]
    for ax in axes:
        for s in starts:
            ax.axvline(s, color="#ccc", linewidth=0.8, zorder=0)
    save(fig, folder / "plots" / "schedule.png", dpi=PAGE_DPI)
    c["md"] += ["![learning rate and momentum per step](plots/schedule.png)", ""]
    return [*image_file(folder / "plots" / "schedule.png", "learning rate and momentum per step"),
            para(f"{len(df)} training steps; grey lines mark the epochs.")]


def _lr_find(c) -> list[dict]:
    folder = c["folder"]
    png = _find(folder, "plots/lr_find.png")
    if png is None and not (folder / "results.csv").is_file():
        return [note("no training here (fit with train.lr = 'auto' runs the LR finder)")]
    if png is None:
        return [note("the LR finder was not run (train.lr was given, not 'auto')")]
    body = image_file(png, "LR finder: loss against learning rate")
    js = png.parent.parent / "lr_find.json"
    if js.is_file():
        sug = json.loads(js.read_text()).get("suggestions", {})
        body.append(table(["suggestion", "learning rate"], [[k, f"{v:.2e}"] for k, v in sug.items()]))
    return body


def _metrics(c) -> list[dict]:
    m, keys, before = c["m"], c["keys"], c["before"] or c["m"].get("at_0_5")
    body = [para(f"On the {m['split_note']}.")] if m.get("split_note") else []
    body.append(_metric_table(m, before, keys))
    v = m.get("valid")
    if v:
        body += [heading(3, "Validation split"), para("Also used to choose the best epoch: optimistic."),
                 _metric_table(v, v.get("at_0_5"), keys)]
    return body


def _metric_table(m: dict, before: dict | None, keys) -> dict:
    """The metrics `keys` of `m`, next to their values at 0.5 when thresholds were tuned."""
    if before:
        return table(["metric", "at 0.5", "at tuned thresholds"], [[k, before.get(k), m.get(k)] for k in keys])
    return table(["metric", "value"], [[k, m.get(k)] for k in keys])


def _confusion_counts(c) -> np.ndarray | None:
    cm = c["m"].get("confusion_matrix")
    return None if cm is None else np.asarray(cm)


def _confusion(c) -> list[dict]:
    folder, classes = c["folder"], c["classes"]
    if c["multi"]:
        return _multilabel_confusion(c)
    cm = _confusion_counts(c)
    if cm is None:
        return [note("no confusion matrix recorded")]
    from .plots import confusion_matrix_png
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    _normalised_png(norm, classes, folder / "plots" / "confusion_matrix_norm.png")
    c["md"] += ["![confusion matrix, row-normalised](plots/confusion_matrix_norm.png)", ""]
    if not (folder / "plots" / "confusion_matrix.png").is_file():
        confusion_matrix_png(cm.tolist(), classes, folder / "plots" / "confusion_matrix.png")
    half = "max-width:49%"    # the two side by side
    return [para("Rows: true class; columns: predicted. Left: counts; right: each row divided by "
                 "its total (the diagonal is each class's recall)."),
            grid([*image_file(folder / "plots" / "confusion_matrix.png", "confusion matrix, counts", half),
                  *image_file(folder / "plots" / "confusion_matrix_norm.png", "confusion matrix, row-normalised",
                              half)])]


def _normalised_png(norm: np.ndarray, classes: list[str], path: Path) -> None:
    plt = pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n + 2), max(4, 0.5 * n + 2)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    save(fig, path, dpi=PAGE_DPI)


def _multilabel_confusion(c) -> list[dict]:
    ev = c["ev"]
    if ev is None:
        return [note("per-label confusion needs the predictions; not recorded here")]
    y, d = ev.y.astype(bool), ev.decided()
    rows = []
    for j, cl in enumerate(ev.classes):
        tp, fn = int((y[:, j] & d[:, j]).sum()), int((y[:, j] & ~d[:, j]).sum())
        fp, tn = int((~y[:, j] & d[:, j]).sum()), int((~y[:, j] & ~d[:, j]).sum())
        rows.append([cl, tp, fn, fp, tn, tp / max(tp + fn, 1), tn / max(fp + tn, 1)])
    return [para("One 2 x 2 matrix per label, at the decision thresholds: counts, then each row "
                 "normalised (true-positive rate = recall, true-negative rate)."),
            table(["label", "TP", "FN", "FP", "TN", "TP rate", "TN rate"], rows)]


def _onevsrest(ev: Evidence):
    y = ev.y.astype(bool) if ev.multi_label else np.eye(len(ev.classes), dtype=bool)[ev.y]
    return y


def _roc_pr(c) -> list[dict]:
    ev, folder = c["ev"], c["folder"]
    if ev is None:
        return [note("ROC and PR curves need the predictions; not recorded here")]
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve
    plt = pyplot()
    y = _onevsrest(ev)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
    if len(ev.classes) > 10:   # tab10 would give two classes one colour
        from cycler import cycler
        for ax in (a1, a2):
            ax.set_prop_cycle(cycler(color=plt.get_cmap("tab20").colors))
    skipped, c["aucs"] = [], {}
    for j, cl in enumerate(ev.classes):
        if y[:, j].all() or not y[:, j].any():
            skipped.append(cl)
            continue
        fpr, tpr, _ = roc_curve(y[:, j], ev.probs[:, j])
        prec, rec, _ = precision_recall_curve(y[:, j], ev.probs[:, j])
        roc_auc, ap = auc(fpr, tpr), average_precision_score(y[:, j], ev.probs[:, j])
        c["aucs"][cl] = (roc_auc, ap)
        a1.plot(fpr, tpr, linewidth=1.2, label=f"{cl} {roc_auc:.3f}")
        a2.plot(rec, prec, linewidth=1.2)
    a1.plot([0, 1], [0, 1], color="#bbb", linestyle=":")
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUC)")
    a2.set(xlabel="recall", ylabel="precision", title="precision-recall (AP)", ylim=(0, 1.02))
    if 0 < len(c["aucs"]) <= MAX_LEGEND:   # one legend: the PR curves share its colours
        a1.legend(fontsize=7, loc="lower right")
    save(fig, folder / "plots" / "roc_pr.png", dpi=PAGE_DPI)
    c["md"] += ["![ROC and precision-recall curves](plots/roc_pr.png)", ""]
    what = "label" if ev.multi_label else "class (one against the rest)"
    body = [para(f"One curve per {what}, on {ev.described or 'the items measured'}; the "
                 f"colours are the same in both plots, the AP of each is in the table below."),
            *image_file(folder / "plots" / "roc_pr.png", "ROC and precision-recall curves")]
    if skipped:
        body.append(note(f"left out (no positive or no negative item): {', '.join(skipped)}"))
    return body


def _per_class(c) -> list[dict]:
    m = c["m"]
    figures = m.get("per_label") if c["multi"] else m.get("per_class")
    if not figures:
        return [note("no per-class figures recorded")]
    aucs = c.get("aucs", {})
    cols = ["threshold", "precision", "recall", "f1", "ap", "support"] if c["multi"] else \
        ["precision", "recall", "f1", "support"]
    extra = (["ROC AUC"] if c["multi"] else ["ROC AUC", "AP"]) if aucs else []  # multi: AP is there
    header = ["label" if c["multi"] else "class", *cols] + extra
    rows = []
    for cl, v in figures.items():
        rows.append([cl, *(v.get(k) for k in cols), *list(aucs.get(cl, (None, None)))[:len(extra)]])
    said = [para("ROC AUC and AP from the curves above (their items).")] if aucs else []
    return [*said, table(header, rows)]


def _losses(ev: Evidence) -> np.ndarray:
    eps = 1e-7
    p = np.clip(ev.probs, eps, 1 - eps)
    if ev.multi_label:
        y = ev.y.astype(bool)
        return -(np.where(y, np.log(p), np.log(1 - p))).mean(axis=1)
    return -np.log(p[np.arange(len(p)), ev.y])


def _label_set(ev: Evidence, row) -> str:
    return ", ".join(cl for cl, on in zip(ev.classes, row) if on) or "(none)"


def _caption(ev: Evidence, i: int, loss: float | None = None) -> tuple[list, str, bool]:
    """(caption as rich text, caption as one line of text, correct?) of item i."""
    name = Path(ev.names[i]).name if ev.names else f"#{i}"
    if ev.multi_label:
        truth, pred = _label_set(ev, ev.y[i]), _label_set(ev, ev.decided()[i])
        ok = bool((ev.y[i].astype(bool) == ev.decided()[i]).all())
        top = np.argsort(-ev.probs[i])[:3]
        probs = ", ".join(f"{ev.classes[j]} {ev.probs[i, j]:.2f}" for j in top)
        text = f"{name}: true {truth}; predicted {pred}; top {probs}"
    else:
        t, p = ev.y[i], int(np.argmax(ev.probs[i]))
        ok = t == p
        truth, pred = ev.classes[t], ev.classes[p]
        probs = f"p {ev.probs[i, p]:.2f}" + ("" if ok else f"; p(true) {ev.probs[i, t]:.2f}")
        text = f"{name}: true {truth}; predicted {pred} ({probs})"
    rich = [("b", name), BR, ("", f"true: {truth}"), BR, ("good" if ok else "bad", f"predicted: {pred}"),
            BR, ("", probs)]
    if loss is not None:
        rich += [BR, ("", f"loss {loss:.2f}")]
    return rich, text, ok


def _top_losses(c) -> list[dict]:
    ev, folder = c["ev"], c["folder"]
    if ev is None:
        return [note("top losses need the predictions; not recorded here")]
    losses = _losses(ev)
    order = np.argsort(-losses)[:TOP_LOSSES]
    figs, tiles, md_rows = [], [], []
    for i in order:
        rich, text, _ = _caption(ev, int(i), float(losses[i]))
        px = ev.image(int(i))
        if px is not None:
            figs.append(_thumb(px, rich))
            tiles.append(px)
        md_rows.append(f"| {text.replace('|', '/')} | {losses[i]:.3f} |")
    if tiles:
        _grid_png(tiles, folder / "plots" / "top_losses.png")
    c["md"] += ["## Top losses", "", "| image | loss |", "|---|---|", *md_rows, ""]
    if tiles:
        c["md"] += ["![top losses](plots/top_losses.png)", ""]
    said = para(f"The {len(order)} images the model is most wrong about (highest loss), on "
                f"{ev.described or 'the items measured'}.")
    if figs:
        return [said, grid(figs)]
    return [said, note("the images could not be read again; their captions:"), bullets(md_rows)]


def _confused(c) -> list[dict]:
    if c["multi"]:
        return _confused_labels(c)
    cm, classes = _confusion_counts(c), c["classes"]
    if cm is None:
        return [note("no confusion matrix recorded")]
    pairs = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(classes))
             for j in range(len(classes)) if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda p: -p[0])
    pairs = pairs[:10]
    c["md"] += ["## Most confused pairs", "", "| true | predicted | count |", "|---|---|---|",
                *(f"| {t} | {p} | {n} |" for n, t, p in pairs), ""]
    if not pairs:
        return [para("No image was given a wrong class.")]
    return [table(["true", "predicted as", "images"], [[t, p, n] for n, t, p in pairs])]


def _confused_labels(c) -> list[dict]:
    ev = c["ev"]
    if ev is None:
        return [note("confused labels need the predictions; not recorded here")]
    y, d = ev.y.astype(bool), ev.decided()
    counts: dict = {}
    for i in range(len(y)):
        for a in np.flatnonzero(y[i] & ~d[i]):
            for b in np.flatnonzero(~y[i] & d[i]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
    pairs = sorted(counts.items(), key=lambda kv: -kv[1])[:10]
    rows = [[ev.classes[a], ev.classes[b], n] for (a, b), n in pairs]
    c["md"] += ["## Most confused labels", "", "| missed | predicted instead | images |", "|---|---|---|",
                *(f"| {a} | {b} | {n} |" for a, b, n in rows), ""]
    return [para("Images where a true label was missed while another label was wrongly predicted."),
            table(["missed", "predicted instead", "images"], rows) if rows
            else para("No image had a label missed and another wrongly predicted.")]


def _gradcam(c) -> list[dict]:
    ev, folder = c["ev"], c["folder"]
    if ev is None or ev.predictor is None:
        why = "needs one model and its predictions" + (" (an ensemble has several)" if ev is not None else "")
        return [note(f"Grad-CAM {why}; not drawn here")]
    from . import gradcam
    pred = ev.decided() if ev.multi_label else np.argmax(ev.probs, axis=1)
    correct = (pred == ev.y.astype(bool)).all(axis=1) if ev.multi_label else pred == ev.y
    conf = ev.probs.max(axis=1)
    top = np.argmax(ev.probs, axis=1)
    picks = _spread(np.flatnonzero(correct), conf, top) + _spread(np.flatnonzero(~correct), conf, top)
    picks = [i for i in picks if ev.image(i) is not None]
    if not picks:
        return [note("no image to explain")]
    px = np.stack([ev.image(i) for i in picks])
    target = [int(np.argmax(ev.probs[i])) for i in picks]   # the top-scoring class / label
    overlays = gradcam.for_images(ev.predictor, px, target)
    if overlays is None:
        return [note("this model has no spatial feature map to explain")]
    figs, tiles = [], []
    for k, i in enumerate(picks):
        rich, _, _ = _caption(ev, i)
        figs.append(_thumb([px[k], overlays[k]], [*rich, BR, ("", f"map for: {ev.classes[target[k]]}")], wide=True))
        tiles += [px[k], overlays[k]]
    _grid_png(tiles, folder / "plots" / "gradcam.png", cols=4)
    c["md"] += ["![Grad-CAM: images and where the model looked](plots/gradcam.png)", ""]
    n_ok = sum(bool(correct[i]) for i in picks)
    wrong = f"then {len(picks) - n_ok} wrong ones" if len(picks) > n_ok else "no image was wrong"
    return [para(f"Where the model looked for its top {'label' if ev.multi_label else 'class'} "
                 f"(red: most), on the last spatial feature map: {n_ok} correct images (the most "
                 f"confident of different classes first), {wrong}."),
            grid(figs)]


def _spread(idx: np.ndarray, conf: np.ndarray, top: np.ndarray, k: int = GRADCAM_EACH) -> list[int]:
    """Up to k of `idx`, most confident first, one per top class before any class repeats."""
    order = [int(i) for i in idx[np.argsort(-conf[idx])]]
    picked, seen = [], set()
    for i in order:
        if top[i] not in seen:
            picked.append(i)
            seen.add(top[i])
    picked += [i for i in order if i not in picked]
    return picked[:k]


def _thresholds(c) -> list[dict]:
    ev, folder = c["ev"], c["folder"]
    body = []
    glob = folder / "plots" / "thresholds.png"
    if glob.is_file():
        body += [heading(3, "One threshold for every label"),
                 *image_file(glob, "metric against one global threshold")]
    if ev is None:
        return body or [note("no threshold search here and no predictions recorded")]
    points = np.linspace(0.02, 0.98, 49)
    y = ev.y.astype(bool)
    chosen = ev.thresholds if ev.thresholds is not None else np.full(len(ev.classes), 0.5)
    plt = pyplot()
    n = len(ev.classes)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.3 * rows), squeeze=False)
    for j, cl in enumerate(ev.classes):
        ax = axes[j // cols][j % cols]
        d = ev.probs[:, j][:, None] >= points[None, :]
        tp = (d & y[:, j][:, None]).sum(0)
        fp = (d & ~y[:, j][:, None]).sum(0)
        fn = (~d & y[:, j][:, None]).sum(0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 1.0)
        ax.plot(points, f1)
        ax.axvline(chosen[j], color="C1", linestyle="--")
        ax.axvline(0.5, color="grey", linestyle=":")
        ax.set_title(f"{cl} (chosen {chosen[j]:.2f})", fontsize=9)
        ax.set_ylim(0, 1.02)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    save(fig, folder / "plots" / "thresholds_per_label.png", dpi=PAGE_DPI)
    c["md"] += ["![F1 of each label against its threshold](plots/thresholds_per_label.png)", ""]
    return [*body, heading(3, "Each label's F1 against its threshold"),
            para("Dashed: the threshold in use; dotted: 0.5."),
            *image_file(folder / "plots" / "thresholds_per_label.png", "F1 of each label against its threshold")]


# ---- comparison pages -------------------------------------------------------------------

def write_page(folder: Path, title: str, sections: list[tuple[str, str, list[dict]]]) -> None:
    """A report.html of given (id, heading, blocks) sections (comparisons)."""
    _write_html(folder, title, [section(sid, head, body) for sid, head, body in sections])


def write_comparison(folder: Path, comparison, described: str, settings: dict) -> None:
    """report.html of `clfapp compare`: the table (a DataFrame, one row per model) and bar
    charts of quality and speed."""
    folder = Path(folder)
    (folder / "plots").mkdir(exist_ok=True)
    quality = [k for k in ("accuracy", "f1_micro", "f1_macro", "map", "roc_auc") if k in comparison.columns]
    speed = [k for k in ("latency_ms_bs1", "images_per_s_bs32") if k in comparison.columns]
    plt = pyplot()
    panels = quality[:2] + speed
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 0.45 * len(comparison) + 1.6),
                             squeeze=False)
    for ax, k in zip(axes[0], panels):
        ax.barh(comparison["model"], comparison[k], color="C0" if k in quality else "C2")
        ax.set_title(k, fontsize=10), ax.invert_yaxis()
    save(fig, folder / "plots" / "comparison.png", dpi=PAGE_DPI)
    said = para(f"Quality on the {described}. Speed: CPU, {settings.get('threads')} thread(s), "
                f"{settings.get('precision')}, median of {settings.get('repeats')} runs after "
                f"warm-up, on {settings.get('timed_on')}.")
    write_page(folder, "Model comparison", [
        ("table", "Table", [said, table(list(comparison.columns), comparison.values.tolist())]),
        ("charts", "Quality and speed", image_file(folder / "plots" / "comparison.png", "quality and speed"))])
