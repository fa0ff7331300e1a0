from __future__ import annotations

from . import checks, common


@common.command
def lr_find(recipe: common.RecipeOrData = None, data: common.Data = None, arch: common.Arch = None,
            size: common.Size = None, bs: common.Bs = None, seed: common.Seed = None,
            name: common.Name = None, weights: common.Weights = None,
            pretrained: common.Pretrained = None, set_: common.Set = None):
    """Run fastai's LR finder on RECIPE's data and model; print its suggestions.

    Saves plots/lr_find.png and lr_find.json (suggestions and the loss curve) in a new folder
    runs/RECIPE-lr-N. Use the valley with `clfapp fit RECIPE --lr VALUE`, or `--lr auto`.
    Like fit, it takes a folder of labelled images (or a .csv) instead of a recipe, and with no
    argument the project's ./clfapp.toml.
    """
    from ..models import runs
    from .. import train

    checks.new_folder(runs.RUNS_DIR, name)
    recipe = common.project_default(recipe)  # none given: ./clfapp.toml
    cfg = common.resolve_config(recipe, data, arch, size, None, bs, None, seed, weights, pretrained, set_)
    common.check_data_path(recipe, cfg)
    folder = runs.new_folder(runs.RUNS_DIR, f"{cfg.recipe}-lr", name)
    figures = train.lr_find(cfg, folder)
    for k, v in figures.items():
        common.echo(f"{k:8s} {v:.2e}")
    common.echo(f"plot: {folder / 'plots' / 'lr_find.png'}")
