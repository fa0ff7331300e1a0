"""What a person reads: metrics.json, report.md and the plots of a run or an evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from .plots import confusion_matrix_png, pyplot, save


def curves_png(results_csv: Path, path: Path) -> None:
    """Loss and metric curves from results.csv."""
    import pandas as pd
    plt = pyplot()
    df = pd.read_csv(results_csv)
    metric_cols = [c for c in df.columns if c not in ("epoch", "phase", "train_loss", "valid_loss", "lr", "seconds")]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(df["epoch"], df["train_loss"], label="train_loss")
    a1.plot(df["epoch"], df["valid_loss"], label="valid_loss")
    a1.set_xlabel("epoch"), a1.legend(), a1.set_title("loss")
    for c in metric_cols:
        a2.plot(df["epoch"], df[c], label=c)
    a2.set_xlabel("epoch"), a2.legend(), a2.set_title("validation metrics")
    save(fig, path)


def lr_find_png(lrs: list, losses: list, suggestions: dict, path: Path) -> None:
    """Loss against learning rate (log scale) with the finder's suggestions marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    end = max(1, len(lrs) - 5)  # the last steps diverge and squash the plot
    ax.plot(lrs[:end], losses[:end])
    for (name, lr), color in zip(suggestions.items(), ("C1", "C2", "C3", "C4")):
        ax.axvline(lr, color=color, linestyle="--", label=f"{name} {lr:.1e}")
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss"), ax.legend()
    save(fig, path)


def fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


SINGLE_KEYS = ("n", "accuracy", "f1_macro", "f1_weighted", "roc_auc_ovr")


def split_note(split: str, multi_label: bool) -> str:
    """Which split a run's figures were measured on, and what that means for trusting them."""
    if split == "test":
        return ("test split (held out: not trained on, nor used to choose the best epoch"
                + (" or the thresholds" if multi_label else "") + ")")
    return ("validation split (also used to choose the best epoch"
            + (" and the thresholds" if multi_label else "") + ": optimistic)")


def _on(m: dict) -> str:
    """" (test split)" / " (validation split)" for a run's figures; "" where not recorded."""
    return {"test": " (test split)", "valid": " (validation split)"}.get(m.get("split"), "")


def _validation_section(m: dict, keys: tuple) -> list[str]:
    """report.md lines for the validation figures of a run whose headline is its test split."""
    v = m.get("valid")
    if not v:
        return []
    before = v.get("at_0_5")
    head = (["| metric | at 0.5 | at tuned thresholds |", "|---|---|---|"] if before
            else ["| metric | value |", "|---|---|"])
    rows = [f"| {k} | {fmt(before[k])} | {fmt(v[k])} |" if before else f"| {k} | {fmt(v[k])} |"
            for k in keys]
    return ["## Validation split", "",
            "Also used to choose the best epoch" + (" and the thresholds" if before else "")
            + ": optimistic.", "", *head, *rows, ""]


def write_metrics(folder: Path, m: dict, classes: list[str], title: str, extra: list[str] = (),
                  evidence=None) -> None:
    """metrics.json, plots/confusion_matrix.png, report.md and report.html in `folder` (plus a
    validation section when `m` holds a run's validation figures under "valid"); `evidence`
    (html.Evidence, the predictions) adds ROC/PR curves, top losses and Grad-CAM."""
    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    confusion_matrix_png(m["confusion_matrix"], classes, folder / "plots" / "confusion_matrix.png")
    lines = [f"# {title}", "", *extra,
             f"| metric | value |", "|---|---|",
             *(f"| {k} | {fmt(m[k])} |" for k in SINGLE_KEYS), "",
             *_validation_section(m, SINGLE_KEYS),
             f"## Per class{_on(m)}", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|",
             *(f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
               for c, v in m["per_class"].items()),
             "", "![confusion matrix](plots/confusion_matrix.png)", ""]
    if (folder / "plots" / "curves.png").exists():
        lines.append("![training curves](plots/curves.png)\n")
    from . import html
    lines += html.write(folder, m, classes, title, extra, evidence, keys=SINGLE_KEYS)
    (folder / "report.md").write_text("\n".join(lines))


def threshold_curve_png(curve: list, chosen: list[float], metric: str, path: Path) -> None:
    """The metric against one global threshold, with 0.5 and the chosen threshold(s) marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c[0] for c in curve], [c[1] for c in curve])
    ax.axvline(0.5, color="grey", linestyle=":", label="0.5")
    if len(set(chosen)) == 1:
        ax.axvline(chosen[0], color="C1", linestyle="--", label=f"chosen {chosen[0]:.2f}")
    ax.set_xlabel("threshold"), ax.set_ylabel(metric), ax.legend()
    save(fig, path)


MULTI_KEYS = ("n", "f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "accuracy_multi",
              "map", "roc_auc_macro")


def frequency_table(freqs) -> list[str]:
    """Markdown rows of each label's frequency per split (a DataFrame: label x split, in %)."""
    cols = list(freqs.columns)
    rows = [f"| label | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
    rows += [f"| {label} | " + " | ".join(f"{v:.1f}%" for v in r) + " |" for label, r in freqs.iterrows()]
    return rows


def write_multilabel_metrics(folder: Path, m: dict, title: str, extra: list[str] = (),
                             before: dict | None = None, search=None, freqs=None,
                             evidence=None) -> None:
    """metrics.json, report.md and report.html for a multi-label model: metrics (before/after
    a threshold search when given), per-label table, label frequencies per split, threshold
    curve; `evidence` (html.Evidence) adds the curves and images that need predictions."""
    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    record = dict(m, at_0_5=before) if before else m
    if search is not None:
        record = dict(record, threshold_curve=search.curve)
        threshold_curve_png(search.curve, search.thresholds, search.metric,
                            folder / "plots" / "thresholds.png")
    (folder / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    head = ["| metric | at 0.5 | at tuned thresholds |", "|---|---|---|"] if before else \
        ["| metric | value |", "|---|---|"]
    rows = [f"| {k} | {fmt(before[k])} | {fmt(m[k])} |" if before else f"| {k} | {fmt(m[k])} |"
            for k in MULTI_KEYS]
    lines = [f"# {title}", "", *extra, *head, *rows, "", *_validation_section(m, MULTI_KEYS),
             f"## Per label{_on(m)}", "", "| label | threshold | precision | recall | f1 | AP | support |",
             "|---|---|---|---|---|---|---|",
             *(f"| {c} | {v['threshold']:.2f} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} "
               f"| {fmt(v['ap'])} | {v['support']} |" for c, v in m["per_label"].items()), ""]
    if freqs is not None:
        lines += ["## Label frequency per split", "", *frequency_table(freqs), ""]
    if search is not None:
        lines += ["## Threshold search", "", "On the data the thresholds were tuned on"
                  + (" (the validation split)." if m.get("split") else "."), "",
                  "![metric against threshold](plots/thresholds.png)", ""]
    if (folder / "plots" / "curves.png").exists():
        lines.append("![training curves](plots/curves.png)\n")
    from . import html
    lines += html.write(folder, m, list(m["per_label"]), title, extra, evidence, multi_label=True,
                        keys=MULTI_KEYS, before=before)
    (folder / "report.md").write_text("\n".join(lines))


def summary_line(m: dict) -> str:
    """One line of headline figures; for a run, the split they were measured on."""
    if "f1_micro" in m:
        line = (f"f1_micro {fmt(m['f1_micro'])}  f1_macro {fmt(m['f1_macro'])}  "
                f"mAP {fmt(m['map'])}  subset_accuracy {fmt(m['subset_accuracy'])}  (n={m['n']})")
    else:
        line = (f"accuracy {fmt(m['accuracy'])}  f1_macro {fmt(m['f1_macro'])}  "
                f"roc_auc {fmt(m['roc_auc_ovr'])}  (n={m['n']})")
    return line + (f" on the {m['split_note']}" if m.get("split_note") else "")


def headline(figures: dict, multi_label: bool) -> dict:
    """{name: {headline key: value}} of several models' figures (an ensemble's members)."""
    keys = MULTI_KEYS if multi_label else SINGLE_KEYS
    return {name: {k: m.get(k) for k in keys} for name, m in figures.items()}


def members_table(members: dict, ensemble: dict, multi_label: bool) -> list[str]:
    """Markdown rows: each member, then the ensemble, on the same items."""
    keys = MULTI_KEYS if multi_label else SINGLE_KEYS
    rows = [f"| model | {' | '.join(keys)} |", "|---|" + "---|" * len(keys)]
    for name, m in [*members.items(), ("ensemble", ensemble)]:
        rows.append(f"| {name} | " + " | ".join(fmt(m.get(k)) for k in keys) + " |")
    return rows
