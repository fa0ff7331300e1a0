"""A regular install (a wheel, not the editable source tree) works from any folder: it finds
its recipes and report templates and trains the embedded default."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO


def _run(args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"{args} exit {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow  # builds and installs a wheel, then fits
def test_wheel_finds_its_recipes_and_fits_from_another_folder(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Built from a clean copy of what the build reads: in the checkout, an earlier build's
    # build/ and *.egg-info (SOURCES.txt) would put files into the wheel that pyproject no
    # longer ships. The build uses the test environment's setuptools: no network needed.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("app", "recipes"):
        shutil.copytree(REPO / part, source / part, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run(["-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(source)],
         tmp_path, env)
    wheel = next(dist.glob("clfapp-*.whl"))
    templates = REPO / "app" / "clfapp" / "report" / "templates"
    shipped = set(zipfile.ZipFile(wheel).namelist())
    data_files = [p for p in templates.iterdir() if p.suffix in (".html", ".css")]
    assert len(data_files) >= 3                                   # page, blocks, report at least
    for p in data_files:   # package-data: without it the wheel has the code but no page layouts
        assert f"clfapp/report/templates/{p.name}" in shipped, f"{p.name} is not in the wheel"
    # the source every ONNX export copies as preprocess.py (read as package data)
    assert "clfapp/infer/onnx_reference.py" in shipped
    _run(["-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], tmp_path, env)

    env = dict(env, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    where = _run(["-c", "import clfapp, clfapp.recipes as r; print(clfapp.__file__); print(r.shipped_dir())"],
                 work, env).stdout.split()
    assert all(line.startswith(str(site)) for line in where), where  # the wheel's copy, not the source

    listed = _run(["-m", "clfapp", "recipes"], work, env).stdout
    assert {"digits", "plants"} <= {line.split()[0] for line in listed.splitlines() if line.strip()}

    _run(["-m", "clfapp", "fit", "digits", "--epochs", "1", "--name", "one"], work, env)
    assert (work / "data" / "digits").is_dir()                     # the sample is made here
    assert (work / "runs" / "one" / "model" / "model.json").is_file()
    page = (work / "runs" / "one" / "report.html").read_text()   # drawn from the wheel's templates
    assert '<section id="summary">' in page and '<section id="per-class">' in page


def test_a_recipe_in_the_current_folder_shadows_a_shipped_one(cli, tmp_path, monkeypatch):
    from clfapp import recipes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "digits.toml").write_text("# my digits\n[train]\nepochs = 1\n")
    (tmp_path / "recipes" / "mine.toml").write_text("# mine\n")
    name, path = recipes.find("digits")
    assert path.resolve() == (tmp_path / "recipes" / "digits.toml").resolve()
    listed = cli("recipes")
    assert listed.exit_code == 0
    assert "my digits" in listed.output and "mine" in listed.output and "plants" in listed.output


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject lists packages by hand (for the recipes mapping): a new subpackage left out
    would be missing from every regular install while the editable one still works."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    app = REPO / "app"
    found = {".".join(p.parent.relative_to(app).parts) for p in (app / "clfapp").rglob("__init__.py")}
    assert found | {"clfapp.builtin_recipes"} == listed


def test_a_source_checkout_run_without_installing_finds_its_recipes(monkeypatch):
    """PYTHONPATH=app on a machine where clfapp was never installed: no clfapp.builtin_recipes
    package; the checkout's recipes/ folder is used instead of a traceback."""
    from importlib import resources

    from clfapp import recipes

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")
    monkeypatch.setattr(resources, "files", missing)
    assert recipes.shipped_dir() == REPO / "recipes"
    assert recipes.find("digits")[1] == (REPO / "recipes" / "digits.toml").resolve()
