"""`clfapp`: the Typer application. Commands import their heavy modules only when they run."""
from __future__ import annotations

import typer

from . import compare, data, ensemble, evaluate, fit, lr_find, predict, recipes, runs, thresholds
from . import export as export_cmd
from . import distill as distill_cmd
from . import tune as tune_cmd

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
app.command("compare")(compare.compare)
app.command("tune")(tune_cmd.tune)
app.command("recipes")(recipes.recipes)
app.command("runs")(runs.runs)
app.add_typer(data.app, name="data")


def run() -> None:
    app()
