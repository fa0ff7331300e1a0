"""`clfapp`: the Typer application. Commands import their heavy modules only when they run."""
from __future__ import annotations

import typer

from . import (compare, data, embed, ensemble, evaluate, fit, lr_find, predict, recipes, runs,
               thresholds)
from . import export as export_cmd
from . import distill as distill_cmd
from . import tune as tune_cmd
from . import serve as serve_cmd

app = typer.Typer(
    help="Turn a folder of labelled images into a trained, evaluated, deployable classifier.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown")
app.command("fit")(fit.fit)
app.command("lr-find")(lr_find.lr_find)
app.command("evaluate")(evaluate.evaluate)
app.command("predict")(predict.predict)
app.command("export")(export_cmd.export)
app.command("thresholds")(thresholds.thresholds)
app.command("ensemble")(ensemble.ensemble)
app.command("distill")(distill_cmd.distill)
app.command("serve")(serve_cmd.serve)
app.command("compare")(compare.compare)
app.command("embed")(embed.embed)
app.command("tune")(tune_cmd.tune)
app.command("recipes")(recipes.recipes)
app.command("runs")(runs.runs)
app.add_typer(data.app, name="data")


def run() -> None:
    """The `clfapp` entry point. A mistake on the command line (an unknown option, a value that
    is not a number, a missing argument) is one line on stderr and exit 2, as every other usage
    error is, instead of click's framed box."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.Abort:   # Ctrl-C outside a command's own handling
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except typer.TyperException as e:   # click's UsageError and BadParameter (typer vendors click)
        if getattr(e, "exit_code", 1) != 2 or not hasattr(e, "format_message"):
            raise
        ctx = getattr(e, "ctx", None)
        where = f"clfapp {' '.join(ctx.command_path.split()[1:])}".strip() if ctx else "clfapp"
        message = " ".join(e.format_message().split()).rstrip(".")   # one line, as click wraps it
        if not message:   # no arguments at all: the help was shown, as asked for
            sys.exit(2)
        typer.echo(f"error: {message}; see '{where} --help'", err=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
