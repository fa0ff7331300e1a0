from __future__ import annotations

from . import common


@common.command
def recipes():
    """List the recipes `clfapp fit` knows, with their descriptions."""
    from .. import recipes as r

    for name, path in r.available().items():
        common.echo(f"{name:16s} {r.describe(path)}")
