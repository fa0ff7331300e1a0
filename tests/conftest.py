"""Shared fixtures: tiny image datasets made in tmp_path, tiny recipes, one trained tiny run.

Everything runs offline (HF_HUB_OFFLINE=1) and on small images so the suite stays fast on a
2-core CPU.
"""
from __future__ import annotations

import os

# Set before anything imports huggingface_hub / timm / torch.
os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models on a shared 2-core machine: with 2 OpenMP threads competing against another busy
# process, a resnet10t step at 32 px took ~2 s; with 1 thread ~0.05 s. Override by setting it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# A tiny timm net (0.37 M parameters) that trains in well under a second per epoch at 32 px.
TINY_ARCH = "test_resnet"

# Three classes that are trivially told apart by colour.
COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def make_image(path: Path, rgb, size: int | tuple = 24, seed: int = 0, mode: str = "RGB") -> Path:
    """A noisy solid-colour image (a light diagonal stripe so not every pixel is equal).

    `size` is one side (square) or (width, height).
    """
    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    a = np.array(rgb, dtype=np.int16)[None, None, :] + rng.integers(-20, 21, (h, w, 3))
    a[np.arange(min(w, h)), np.arange(min(w, h))] += 25
    a[: h // 3, : w // 3] += 30   # a lighter corner: resize, crop and pad give different pixels
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


def make_folder_dataset(root: Path, n_per_class: int = 10, classes=None, size: int | tuple = 24,
                        ext: str = "png") -> Path:
    """ImageNet layout: root/CLASS/CLASS_i.ext."""
    classes = classes or list(COLOURS)
    for k, name in enumerate(classes):
        rgb = COLOURS.get(name, list(COLOURS.values())[k % len(COLOURS)])
        for i in range(n_per_class):
            make_image(root / name / f"{name}_{i:02d}.{ext}", rgb, size, seed=100 * k + i)
    return root


def make_stripes_multilabel(root: Path, n: int = 48) -> Path:
    """root/labels.csv + images: three vertical stripes, each coloured when its label is on."""
    (root / "images").mkdir(parents=True)
    names = list(COLOURS)
    rows = ["fname,labels"]
    rng = np.random.default_rng(0)
    for i in range(n):
        on = [c for j, c in enumerate(names) if (i >> j) & 1 or (i % 8 == 7)]
        a = np.full((24, 24, 3), 128, dtype=np.int16)
        for j, c in enumerate(names):
            if c in on:
                a[:, 8 * j:8 * j + 8] = COLOURS[c]
        a += rng.integers(-15, 16, a.shape)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / "images" / f"m{i:02d}.png")
        rows.append(f"images/m{i:02d}.png,{' '.join(on)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def write_recipe(path: Path, data_path: str | Path = "data/shapes", **sections) -> Path:
    """A tiny from-scratch recipe; `sections` = {"train": {"epochs": 2}, ...} extras/overrides."""
    tables = {
        "data": {"path": str(data_path), "size": 32},
        "model": {"arch": TINY_ARCH, "pretrained": False},
        "train": {"epochs": 1, "freeze_epochs": 0, "bs": 8, "lr": 1e-2, "precision": "fp32"},
    }
    for name, table in sections.items():
        tables.setdefault(name, {}).update(table)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["# tiny: a test recipe"]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """tmp_path/data/shapes: 3 colour classes x 10 images of 24 px (ImageNet layout)."""
    return make_folder_dataset(tmp_path / "data" / "shapes")


@pytest.fixture
def tiny_recipe(tmp_path, tiny_data) -> Path:
    """tmp_path/tiny.toml pointing at tiny_data by a path relative to tmp_path."""
    return write_recipe(tmp_path / "tiny.toml", "data/shapes")


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from clfapp.cli.main import app

    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])
    return invoke


@pytest.fixture(scope="session", autouse=True)
def _weights_cache(tmp_path_factory):
    """clfapp's converted-weights cache in a temp folder: tests never write to ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLFAPP_CACHE", str(tmp_path_factory.mktemp("clfapp-cache")))
        yield


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny from-scratch run (fp32, 2 epochs) made by `clfapp fit`, shared by several tests.

    Returns (workdir, run folder). Tests must not modify it.
    """
    from typer.testing import CliRunner

    from clfapp.cli.main import app

    work = tmp_path_factory.mktemp("trained")
    make_folder_dataset(work / "data" / "shapes", n_per_class=10)
    write_recipe(work / "tiny.toml", "data/shapes", train={"epochs": 2})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        result = CliRunner().invoke(app, ["fit", "tiny.toml", "--name", "tiny-run"])
    assert result.exit_code == 0, result.output
    return work, work / "runs" / "tiny-run"


def assert_usage_error(result, *fragments):
    """Exit 2, exactly one stderr line starting with 'error:', no traceback."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    assert lines[0].startswith("error:"), lines[0]
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


def copy_files(files, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, target / Path(f).name)


def as_older_model_json(raw: dict, fmt: int = 3) -> dict:
    """A model.json (format 4) rewritten as clfapp wrote it before the inference spec
    (formats 1-3): the spec's facts at top level, test_size 0 when it is the training size."""
    inf = raw.pop("inference")
    raw.update(resize=inf["resize"], tta_flips=inf["tta_flips"], tta=inf["tta"],
               test_size=0 if inf["size"] == raw["size"] else inf["size"],
               thresholds=inf["thresholds"], trained_on=inf["trained_on"], format=fmt)
    return raw


def make_tiny_bundle(folder: Path, *, seed: int = 0, size: int = 24, tta_flips=(),
                     tta: bool = False, head_hidden: str = "") -> Path:
    """An untrained TINY_ARCH model over COLOURS with non-trivial BatchNorm statistics (a few
    training-mode passes of noise), saved as the bundle of run folder `folder`; its inference
    spec runs at `size` with `tta_flips` (checked as model.json's are) and `tta`."""
    import torch

    from clfapp import models
    from clfapp.infer import bundle, spec

    torch.manual_seed(seed)
    arch = models.resolve(TINY_ARCH)
    model, _ = models.build(arch, len(COLOURS), 0.0, True, head_hidden=head_hidden)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, size, size))
    inference = spec.InferenceSpec(size=size, resize="squish", tta=tta,
                                   tta_flips=spec.checked_flips(list(tta_flips)))
    meta = bundle.BundleMeta(arch=TINY_ARCH, classes=sorted(COLOURS), size=size,
                             mean=list(arch.mean), std=list(arch.std), dropout=0.0,
                             head_hidden=head_hidden, inference=inference)
    bundle.save(folder / "model", model.eval(), meta)
    return folder


def altered_copy(src: Path, dst: Path) -> Path:
    """Resized by 90 %, cropped by 5 %, saved as JPEG quality 50 (the bench's alterations)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        w, h = round(img.width * 0.9), round(img.height * 0.9)
        img = img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        img.crop((2, 1, w - round(0.05 * w) + 2, h - round(0.05 * h) + 1)).save(dst, quality=50)
    return dst
