from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import checks, common


@common.command
def runs(names: Annotated[Optional[list[str]], typer.Argument(help="Runs to show (folders, or names under --dir); default: all of them.", show_default=False)] = None,
         sort: Annotated[Optional[str], typer.Option("--sort", help="Order by a column or any figure in metrics.json (accuracy, f1_macro, best, seconds, params_m, date, ...): figures best first, seconds/params/size/epochs smallest first, date newest first.")] = None,
         compare: Annotated[bool, typer.Option("--compare", help="Plot the given runs' curves side by side (losses, metric per epoch, LR per step) into DIR/compare-runs-N/ (curves.png, report.html, report.md).")] = False,
         dir_: Annotated[Path, typer.Option("--dir", help="Folder holding the runs.")] = Path("runs"),
         name: common.Name = None):
    """A table of the finished runs: recipe, arch, size, epochs, best figure (accuracy, or
    f1_micro for multi-label; `on` says which split), seconds, date, parameters (millions).

    Folders that are not finished runs (training, or stopped before an epoch ended) are
    skipped with a note. `clfapp runs --compare RUN RUN...` also writes their curves side by
    side into a new folder.
    """
    from ..report import history
    from ..models import runs as folders

    if compare:   # its folder DIR/compare-runs-N (or --name)
        checks.new_folder(dir_, name)
    if names:
        found = [folders.existing(n) if not (dir_ / n).is_dir() else dir_ / n for n in names]
        rows, skipped = [], {}
        for f in found:
            r = history.read(f)
            if isinstance(r, history.Run):
                rows.append(r)
            else:
                skipped[f.name] = r or "a comparison folder, not a run"
    else:
        if compare:
            raise common.UsageError("--compare needs the runs to compare: clfapp runs --compare RUN RUN ...")
        rows, skipped = history.scan(dir_)
    rows = history.sort(rows, sort)
    cols, cells = history.table_rows(rows, sort)
    if rows:
        common.echo(history.text_table(cols, cells))
    else:
        common.echo(f"no finished runs in {dir_}")
    if skipped:
        common.echo(f"skipped {len(skipped)} folder(s) that are not finished runs: "
                    + "; ".join(f"{n} ({why})" for n, why in skipped.items()))
    if compare:
        if skipped:
            raise common.UsageError("--compare takes finished runs only; see the skipped folders above")
        out = folders.new_folder(dir_, "compare-runs", name)
        try:
            page = history.compare([r.folder for r in rows], out)
        except BaseException:
            import shutil
            shutil.rmtree(out, ignore_errors=True)  # never a half-made comparison
            raise
        common.echo(f"written to {page} (and {out / 'curves.png'})")
