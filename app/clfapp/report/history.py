"""The runs under runs/: one table of them (`clfapp runs`), and their curves side by side
(`clfapp runs --compare`).

Reads only what a finished run folder holds (config.toml, metrics.json, results.csv,
steps.csv, the safetensors header for the parameter count): no torch, no model loading, so
the table of a hundred runs is instant.
"""
from __future__ import annotations

import difflib
import json
import struct
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import UsageError

COLUMNS = ("run", "recipe", "arch", "size", "epochs", "metric", "best", "on", "seconds", "date",
           "params_m")
ASCENDING = {"run", "recipe", "arch", "seconds", "params_m", "size", "epochs"}
"""--sort keys where the smallest comes first; other figures (metrics, date) best/newest first;
a key with "loss" in it is ascending too."""
NOT_RUNS = ("comparison.csv", "runs.csv")   # compare-N and compare-runs-N folders


@dataclass
class Run:
    folder: Path
    values: dict = field(default_factory=dict)    # COLUMNS plus every top-level figure


def _headline(m: dict) -> str:
    return "f1_micro" if "f1_micro" in m else "accuracy"


def parameters(weights: Path) -> int | None:
    """Trainable-parameter count from a safetensors header (BatchNorm statistics left out)."""
    try:
        with open(weights, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for key, v in header.items():
        if key == "__metadata__" or key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        size = 1
        for d in v.get("shape", []):
            size *= d
        total += size
    return total


def read(folder: Path) -> Run | str:
    """A finished run's row, or why the folder is not one ("" = not a run at all: a comparison)."""
    folder = Path(folder)
    if any((folder / n).is_file() for n in NOT_RUNS):
        return ""
    kind = "ensemble" if (folder / "ensemble.json").is_file() else "run"
    if kind == "run" and not (folder / "config.toml").is_file():
        return "no config.toml"
    if not (folder / "metrics.json").is_file():
        return "unfinished: no metrics.json yet"
    try:
        m = json.loads((folder / "metrics.json").read_text())
        cfg = tomllib.loads((folder / "config.toml").read_text()) if kind == "run" else {}
    except (OSError, ValueError) as e:
        return f"unreadable: {e}"
    metric = _headline(m)
    epochs = None
    if (folder / "results.csv").is_file():
        epochs = max(0, len((folder / "results.csv").read_text().strip().splitlines()) - 1)
    if kind == "ensemble":
        meta = json.loads((folder / "ensemble.json").read_text())
        recipe, arch, size = "ensemble", f"{len(meta.get('members', []))} members", None
        weights = list((folder / "members").glob("*/model/weights.safetensors"))
    else:
        recipe, arch = cfg.get("recipe", ""), cfg.get("model", {}).get("arch", "")
        size = cfg.get("data", {}).get("size")
        weights = [folder / "model" / "weights.safetensors"]
    counts = [parameters(w) for w in weights if w.is_file()]
    values = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    values.update(run=folder.name, recipe=recipe, arch=arch, size=size, epochs=epochs, metric=metric,
                  best=m.get(metric), on=m.get("split", ""), seconds=m.get("seconds"),
                  date=datetime.fromtimestamp((folder / "metrics.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M"),
                  params_m=(sum(counts) / 1e6 if counts and None not in counts else None))
    return Run(folder, values)


def scan(parent: Path) -> tuple[list[Run], dict[str, str]]:
    """(finished runs, {folder name: why skipped}) of the folders directly under `parent`."""
    parent = Path(parent)
    if not parent.is_dir():
        raise UsageError(f"{parent} does not exist: no runs yet (clfapp fit writes them there)")
    runs, skipped = [], {}
    for d in sorted(p for p in parent.iterdir() if p.is_dir()):
        r = read(d)
        if isinstance(r, Run):
            runs.append(r)
        elif r:
            skipped[d.name] = r
    return runs, skipped


def sort(runs: list[Run], key: str | None) -> list[Run]:
    """Runs ordered by `key` (a column or any figure in metrics.json); runs without it last."""
    if not key:
        return sorted(runs, key=lambda r: r.values["date"])
    known = sorted({k for r in runs for k in r.values} | set(COLUMNS))
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        raise UsageError(f"--sort {key!r} is not a column or figure of these runs"
                         + (f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(known)})"))
    up = key in ASCENDING or "loss" in key
    have = [r for r in runs if r.values.get(key) is not None]
    rest = [r for r in runs if r.values.get(key) is None]
    return sorted(have, key=lambda r: r.values[key], reverse=not up) + rest


DECIMALS = {"seconds": 1, "params_m": 2}


def _cell(v, col: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and col in DECIMALS:
        return f"{v:.{DECIMALS[col]}f}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}" if abs(v) >= 1000 else f"{v:.1f}"
    return str(v)


def table_rows(runs: list[Run], extra: str | None = None) -> tuple[list[str], list[list[str]]]:
    cols = list(COLUMNS) + ([extra] if extra and extra not in COLUMNS else [])
    return cols, [[_cell(r.values.get(c), c) for c in cols] for r in runs]


def text_table(cols: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns: reads in a terminal and in a log."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(cols: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(r) + " |" for r in rows)]


# ---- --compare ------------------------------------------------------------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(folders: list[Path]) -> tuple[list[str], list[list[str]]]:
    """The config keys whose values differ between the runs: (header, rows)."""
    flats = []
    for f in folders:
        try:
            flats.append(_flat(tomllib.loads((f / "config.toml").read_text())))
        except (OSError, tomllib.TOMLDecodeError):
            flats.append({})
    keys = sorted({k for fl in flats for k in fl})
    rows = [[k, *(_cell(fl.get(k)) for fl in flats)] for k in keys
            if len({json.dumps(fl.get(k)) for fl in flats}) > 1]
    return ["key", *(f.name for f in folders)], rows


def compare(folders: list[Path], out: Path) -> Path:
    """Side-by-side curves of finished runs (losses, headline metric per epoch, LR per step):
    out/curves.png, out/report.html, out/report.md and out/runs.csv. Returns report.html."""
    import pandas as pd

    from . import blocks, html
    from .plots import pyplot, save

    if len(folders) < 2:
        raise UsageError("--compare needs at least two runs")
    runs = []
    for f in folders:
        r = read(f)
        if not isinstance(r, Run):
            raise UsageError(f"{f} is not a finished run ({r or 'a comparison folder'})")
        if not (f / "results.csv").is_file():
            raise UsageError(f"{f} has no results.csv (an ensemble has no training curves): "
                             "compare trained runs")
        runs.append(r)
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    (a_tl, a_vl), (a_m, a_lr) = axes
    for r in runs:
        df = pd.read_csv(r.folder / "results.csv")
        name, metric = r.folder.name, r.values["metric"]
        a_tl.plot(df["epoch"], df["train_loss"], marker="o", markersize=3, label=name)
        a_vl.plot(df["epoch"], df["valid_loss"], marker="o", markersize=3, label=name)
        if metric in df:
            a_m.plot(df["epoch"], df[metric], marker="o", markersize=3, label=f"{name} ({metric})")
        steps = r.folder / "steps.csv"
        if steps.is_file():
            s = pd.read_csv(steps)
            a_lr.plot(s["step"], s["lr"], label=name)
        else:
            a_lr.plot(df["epoch"], df["lr"], marker="o", markersize=3, label=f"{name} (per epoch)")
    from matplotlib.ticker import MaxNLocator
    for ax, title, xl in ((a_tl, "train loss", "epoch"), (a_vl, "validation loss", "epoch"),
                          (a_m, "validation metric", "epoch"), (a_lr, "learning rate", "step")):
        ax.set_title(title), ax.set_xlabel(xl), ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole
    save(fig, out / "curves.png", dpi=90)

    cols, rows = table_rows(runs)
    pd.DataFrame(rows, columns=cols).to_csv(out / "runs.csv", index=False)
    dcols, drows = config_differences([r.folder for r in runs])
    names = ", ".join(r.folder.name for r in runs)
    md = [f"# Runs compared: {names}", "", *markdown_table(cols, rows), "",
          "![curves side by side](curves.png)", "", "## Config differences", "",
          *(markdown_table(dcols, drows) if drows else ["The configs are the same."]), ""]
    html.atomic_write(out / "report.md", "\n".join(md))
    html.write_page(out, f"Runs compared: {names}", [
        ("table", "Runs", [blocks.table(cols, rows)]),   # not via markdown: a cell may hold a |
        ("curves", "Curves side by side", blocks.image_file(out / "curves.png", "curves side by side")),
        ("config-diff", "Config differences", [blocks.table(dcols, drows) if drows
                                               else blocks.para("The configs are the same.")]),
    ])
    return out / "report.html"
