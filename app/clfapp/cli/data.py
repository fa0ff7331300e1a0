from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import common

app = typer.Typer(help="Datasets: embedded samples.", no_args_is_help=True, rich_markup_mode="markdown")


@app.command("sample")
@common.command
def sample(name: Annotated[str, typer.Argument(help="Sample to write: digits.")],
           out: Annotated[Optional[Path], typer.Option("--out", help="Target folder (default data/NAME).")] = None):
    """Write an embedded dataset (no network needed) as image files in ImageNet layout."""
    from ..data import samples

    samples.make(name, out or Path("data") / name)
