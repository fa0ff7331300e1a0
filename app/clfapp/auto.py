"""What clfapp picks when the user did not say: settings chosen from the data, the project's
recipe, the newest finished run.

`clfapp fit photos/` trains config.py's defaults on that folder, except for the keys below,
which are chosen from a cheap summary of the data (`summarize`: one scan of the file list and
the headers of at most SAMPLE_FILES images, nothing decoded) by a pure function (`choose`).
A chosen value is applied only where the key still has its config.py default and neither the
recipe, a flag nor --set gave it (`apply`); one line says what was chosen and why, and the
values (not the rule) land in the run's config.toml like any other setting.

The other forms people type first: `clfapp fit` / `clfapp lr-find` with no argument use
./clfapp.toml (`project_recipe`); `clfapp predict photos/` uses the newest finished run under
runs/ (`default_run`). Each says which default it used.
"""
from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import UsageError
from .models.runs import looks_like_run, named, newest_finished_run

# --- the rules' numbers (measured on a 2-core CPU, DESIGN §8; to be tuned) -------------------

SAMPLE_FILES = 200
"""Image headers read for the median size: a stable median, well under a second to read."""
SIZE_STEP = 32
"""Sizes are multiples of the nets' total stride (32 for efficientnets and resnets)."""
SIZE_MIN, SIZE_MAX = 64, 224
"""CPU: below 64 px an ImageNet backbone has little left to see; 224 px is the size its weights
were trained at, and a CPU pays for every pixel beyond (35 s per 400 images per epoch at 224)."""
EPOCH_TIERS = (          # (training images at least, epochs after the frozen one, peak lr, batch size)
    (0, 6, 2e-3, 16),    # small folders: what limits them is optimizer steps, not epochs. At
                         # 3 epochs, lr 1e-3 and batches of 64, 240 images made 12 steps and
                         # reached 0.72 on three seedling species where more steps reach 0.85
                         # (bench/small_folders.py); one-cycle's low final LR keeps the last
                         # epochs steady
    (400, 6, 2e-3, 32),
    (2000, 8, 3e-3, 64), # plants (3319 training images) still underfit after 3 epochs at 2e-3 and
                         # gained 0.10 accuracy at a higher LR: more epochs, a somewhat higher LR
)
LR_MULT = 3.0
"""The body's LR is the head's / this after the frozen phase. fastai's 100 assumes three or more
parameter groups; a timm body is one group, so 100 left the whole body at lr/100 and barely
moving: on plant seedlings lr_mult 3 reached 0.815 where 10 (at 1.5x the LR) reached 0.781."""
TTA = True
"""Flip TTA at the end of fit and by default in predict: +1.6 points on plant seedlings (0.850 →
0.866) for one extra pass per mirror."""
EMA_BELOW = (2000, 0.999)
"""Below this many training images, validate and save a moving average of the weights
(train.ema, this decay): small batches make the BatchNorm statistics and the last epochs noisy.
On three 240-300-image folders (bench/small_folders.py) the last epoch fell 2.9 / 12.5 / 3.8
points below the best without it, 0.0 / 2.5 / 1.9 with it; the best epochs were the same or one
validation image apart (0.926 / 0.725 / 0.981 without, 0.912 / 0.700 / 0.981 with)."""
PROGRESSIVE_FROM = (2000, 0.625)
"""From this many training images on, progressive resizing from this fraction of the size:
the main phase's steps ran 1.7x faster (bench/epoch_speed.py); small sets train fast anyway."""
ARCH_CPU = "tf_efficientnet_lite0"
"""Its ImageNet weights ship in a pip package (works offline, DESIGN §5), and it is the fastest
of the measured pretrained archs on a CPU (DESIGN §8)."""

PROJECT_RECIPE = "clfapp.toml"
"""The project's own recipe in the current folder: what `clfapp fit` with no argument trains."""


@dataclass(frozen=True)
class Summary:
    """What the rules look at: cheap to gather, nothing decoded."""
    n_images: int
    n_train: int               # images the training split will have (estimated before the split)
    n_classes: int
    multi_label: bool
    median_side: int | None    # median short side in pixels of the sampled headers (None: none read)

    def describe(self) -> str:
        kinds = "labels, multi-label" if self.multi_label else "classes"
        side = f", median short side {self.median_side} px" if self.median_side else ""
        return f"{self.n_images} images, {self.n_classes} {kinds}{side}"


def choose(summary: Summary, device: str = "CPU") -> dict[tuple[str, str], object]:
    """The settings for this data, `{(section, key): value}`: a pure function of the summary.

    size: the median short side rounded to a multiple of SIZE_STEP, within [SIZE_MIN, SIZE_MAX]
    (left out when no header could be read); epochs and lr: by the number of training images
    (EPOCH_TIERS, with the batch size); the body's LR divisor (LR_MULT), flip TTA (TTA), a weight
    average for small sets (EMA_BELOW), progressive resizing for larger sets (PROGRESSIVE_FROM);
    arch: ARCH_CPU. The numbers were measured on a CPU; a GPU gets the same
    values for now (`device` only names where it runs)."""
    out: dict[tuple[str, str], object] = {}
    if summary.median_side:
        size = round(summary.median_side / SIZE_STEP) * SIZE_STEP
        out[("data", "size")] = min(max(size, SIZE_MIN), SIZE_MAX)
    epochs, lr, bs = next((e, r, b) for least, e, r, b in reversed(EPOCH_TIERS) if summary.n_train >= least)
    out[("train", "epochs")] = epochs
    out[("train", "lr")] = lr
    out[("train", "bs")] = bs
    out[("train", "lr_mult")] = LR_MULT
    out[("aug", "tta")] = TTA
    if summary.n_train < EMA_BELOW[0]:
        out[("train", "ema")] = EMA_BELOW[1]
    if summary.n_train >= PROGRESSIVE_FROM[0]:
        out[("train", "progressive")] = PROGRESSIVE_FROM[1]
    out[("model", "arch")] = ARCH_CPU
    return out


def summarize(data_cfg) -> Summary:
    """Scan the dataset (as `fit` will) and read the size of at most SAMPLE_FILES images, evenly
    spread over the items, from their headers only (PIL opens lazily: nothing is decoded)."""
    import warnings

    from PIL import Image

    from . import data

    items = data.scan(data_cfg)
    n = len(items)
    split = items["split"]
    ungiven = int(split.isna().sum())
    # split folders (or a CSV split column) say it; otherwise the hash split keeps about this share
    n_train = int((split == "train").sum()) + round(ungiven * (1 - data_cfg.valid_pct - data_cfg.test_pct))
    paths = items["path"].tolist()
    step = max(1, len(paths) // SAMPLE_FILES)
    sides = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EXIF chatter, decompression-bomb size warnings
        for p in paths[::step][:SAMPLE_FILES]:
            try:
                with Image.open(p) as im:
                    sides.append(min(im.size))
            except Exception:  # an unreadable file is skipped here and warned about by fit
                continue
    median = int(round(statistics.median(sides))) if sides else None
    return Summary(n, n_train, len(data.classes_of(items, data_cfg.label_delim)),
                   data.is_multi_label(items), median)


def device() -> str:
    """Where training will run, for the line that says what was chosen."""
    import torch
    return "GPU" if torch.cuda.is_available() else "CPU"


def apply(cfg, given: set[tuple[str, str]], summary: Summary | None = None,
          where: str | None = None):
    """`cfg` with the values chosen for its data, where the key still has its config.py default
    and is not in `given` (the keys the recipe, a flag or --set named); and the one line saying
    what was chosen and why (None when nothing was left to choose)."""
    from . import config

    summary = summary if summary is not None else summarize(cfg.data)
    where = where or device()
    applied = {}
    for (section, key), value in choose(summary, where).items():
        default = {f.name: f.default for f in dataclasses.fields(type(getattr(cfg, section)))}[key]
        if (section, key) not in given and getattr(getattr(cfg, section), key) == default:
            applied[(section, key)] = value
    if not applied:
        return cfg, None
    tables = config.to_dict(cfg)
    for (section, key), value in applied.items():
        tables[section][key] = value
    cfg = config.build(tables)  # validated like any other config
    shown = [SHOWN[k](v, where) for k, v in sorted(applied.items(), key=lambda kv: list(SHOWN).index(kv[0]))]
    return cfg, f"defaults for this data ({summary.describe()}): {', '.join(shown)}"


SHOWN = {   # how each chosen value reads in the line `apply` prints, in this order
    ("data", "size"): lambda v, where: f"size {v}",
    ("train", "epochs"): lambda v, where: f"{v} epochs",
    ("train", "lr"): lambda v, where: f"lr {format_lr(v)}",
    ("train", "bs"): lambda v, where: f"batches of {v}",
    ("train", "lr_mult"): lambda v, where: f"body lr / {v:g}",
    ("train", "progressive"): lambda v, where: f"progressive resizing from {v:g}x",
    ("train", "ema"): lambda v, where: f"weight average (EMA {v:g})",
    ("aug", "tta"): lambda v, where: "flip TTA",
    ("model", "arch"): lambda v, where: f"{v} ({where})",
}


def format_lr(lr: float) -> str:
    """1e-3, 2e-3, 3.5e-4: as a person writes it (not 0.001 or 1e-03)."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


# --- the project's defaults for the argument people leave out --------------------------------

def project_recipe(recipe: str | None) -> tuple[str, str | None]:
    """The recipe to use and a line saying so: `recipe` as given, or with none given, the
    project's ./clfapp.toml; neither is a usage error naming the ways out."""
    if recipe is not None:
        return recipe, None
    if Path(PROJECT_RECIPE).is_file():
        return PROJECT_RECIPE, f"using the project's recipe: ./{PROJECT_RECIPE}"
    raise UsageError(f"no recipe given and no {PROJECT_RECIPE} in this folder: pass a recipe "
                     f"(clfapp recipes) or a folder of images (e.g. photos/), or create {PROJECT_RECIPE}")


def default_run(arg: str, runs_dir: Path) -> tuple[Path, str]:
    """`clfapp predict photos/` (one argument): the newest finished run under `runs_dir`, and the
    line naming it. An argument that is a run is a usage error (the images are missing), and so
    is one that does not exist, or no finished run."""
    p, runs_dir = Path(arg), Path(runs_dir)
    inside_runs = runs_dir.resolve() in (p.resolve(), *p.resolve().parents)
    # runs.named: a relative name only; `runs_dir / arg` of an absolute arg is arg itself, which
    # refused every absolute folder of images as "a run"
    if named(arg, runs_dir) is not None or inside_runs or looks_like_run(p):
        raise UsageError(f"{arg} is a run; give the images to classify too: clfapp predict {arg} PATH...")
    if not p.exists():
        raise UsageError(f"{arg} is neither a run nor an image, folder or list of images")
    run = newest_finished_run(runs_dir)
    if run is None:
        raise UsageError(f"no finished run under {runs_dir}/ to predict with (none has model/ and "
                         f"metrics.json); train one with clfapp fit, or name one: clfapp predict RUN PATH...")
    when = datetime.fromtimestamp((run / "metrics.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return run, f"using the newest finished run: {run} ({when})"
