"""pyproject.toml tells the truth: the declared floors admit only versions the code works with.

Each API below that clfapp calls appeared in a known release. Where the source uses it, the
declared floor must be at least that release (else `pip install clfapp` can pick a version on
which it fails at run time). The torch and torchvision floors were installed and smoke-tested
once in a throwaway venv (torch 2.4.0, torchvision 0.19.0, Python 3.11). fastai's range is the
releases tests/test_fastai_compat.py passed on (pyproject.toml says which).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "app" / "clfapp"

# (package, regex over clfapp's source, first release that has it, evidence)
API_INTRODUCED = [
    ("torch", r"is_autocast_enabled\(\s*['\"]", "2.4",
     "is_autocast_enabled(device_type): pytorch PR #124359 (Apr 2024), first in 2.4.0's "
     "torch/_C/__init__.pyi; before it the call took no argument and meant CUDA"),
    ("torch", r"weights_only\s*=", "1.13", "torch.load(weights_only=...) is new in 1.13"),
    ("torch", r"torch\.autocast\(\s*['\"]cpu['\"]", "1.10", "CPU autocast is new in 1.10"),
    ("torchvision", r"list_models|get_model_weights", "0.14",
     "the model registration API is new in torchvision 0.14"),
]

# torch releases each torchvision release is built for (torchvision wheels pin torch exactly)
TORCHVISION_FOR_TORCH = {"2.2": "0.17", "2.3": "0.18", "2.4": "0.19", "2.5": "0.20",
                         "2.6": "0.21", "2.7": "0.22"}

# fastai 2.7.x capped torch in its wheel METADATA (read from the wheels on PyPI), as did 2.8.1-2.8.6
FASTAI_TORCH_CAP = {"2.7.15": "2.4", "2.7.16": "2.5", "2.7.17": "2.5", "2.7.18": "2.6",
                    "2.7.19": "2.7"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> dict[str, Requirement]:
    reqs = (Requirement(r) for r in _project()["dependencies"])
    return {r.name: r for r in reqs}


def floor(name: str) -> Version:
    """The lowest version a dependency's `>=` specifier admits."""
    lows = [Version(s.version) for s in _requirements()[name].specifier if s.operator == ">="]
    assert lows, f"{name} has no >= floor in pyproject.toml"
    return max(lows)


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted(PACKAGE.rglob("*.py")))


@pytest.mark.parametrize("package,pattern,introduced,evidence", API_INTRODUCED,
                         ids=[f"{a[0]}-{a[2]}" for a in API_INTRODUCED])
def test_floor_admits_only_versions_with_the_apis_used(package, pattern, introduced, evidence):
    if not re.search(pattern, _source()):
        pytest.skip(f"clfapp no longer uses {pattern!r}")
    assert floor(package) >= Version(introduced), f"{package} floor below {introduced}: {evidence}"


def test_torchvision_floor_pairs_with_the_torch_floor():
    """torchvision X.Y is built for exactly one torch: a lower torchvision floor is a lie."""
    t = floor("torch")
    assert TORCHVISION_FOR_TORCH[f"{t.major}.{t.minor}"] == \
        f"{floor('torchvision').major}.{floor('torchvision').minor}"


def test_fastai_floor_admits_the_torch_floor():
    """fastai 2.7.15 requires torch<2.4: with torch>=2.4 its floor would be unsatisfiable."""
    cap = FASTAI_TORCH_CAP.get(str(floor("fastai")))
    if cap is None:
        assert floor("fastai") > Version(max(FASTAI_TORCH_CAP, key=Version)), "unknown 2.7 release"
    else:
        assert floor("torch") < Version(cap)


def test_requires_python_covers_the_standard_library_used():
    """tomllib is 3.11+; without a tomli fallback requires-python must exclude 3.10."""
    spec = SpecifierSet(_project()["requires-python"])
    unguarded_tomllib = re.search(r"^import tomllib", _source(), re.M)
    if unguarded_tomllib:
        assert not spec.contains("3.10"), "tomllib needs Python 3.11"
    assert spec.contains("{}.{}".format(*sys.version_info[:2]))   # and admits this Python


def test_installed_versions_satisfy_the_declared_ones():
    for name, req in _requirements().items():
        if req.marker is not None and not req.marker.evaluate():
            continue
        version = importlib.metadata.version(name)
        assert req.specifier.contains(version, prereleases=True), f"{name} {version} not {req.specifier}"


def test_every_module_imports():
    import clfapp

    names = [m.name for m in pkgutil.walk_packages(clfapp.__path__, "clfapp.")]
    assert len(names) > 10
    for name in names:
        if name == "clfapp.__main__":
            continue   # runs the CLI when imported
        importlib.import_module(name)


def test_cpu_autocast_query_matches_the_floor_api():
    """The call the floor is raised for works here and sees CPU autocast (not CUDA's)."""
    import torch

    assert torch.is_autocast_enabled("cpu") is False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") is True


@pytest.mark.parametrize("flags,expected", [({"avx2", "amx_bf16"}, True), ({"avx512_bf16"}, True),
                                            ({"avx2", "avx512f"}, False), (set(), False)])
def test_fast_bf16_detection_without_torchs_detectors(monkeypatch, flags, expected):
    """torch 2.4 (the floor) lacks torch.cpu._is_amx_tile_supported and _is_avx512_bf16_supported:
    then "auto" precision must still find AMX / AVX512-BF16, from the CPU's flags."""
    import torch

    from clfapp.models import callbacks

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(callbacks, "cpu_flags", lambda: flags)
    assert callbacks.cpu_has_fast_bf16() is expected
    assert callbacks.bf16_enabled("auto") is (expected and not torch.cuda.is_available())


def test_cpu_flags_reads_this_machine():
    from clfapp.models import callbacks

    flags = callbacks.cpu_flags()
    if Path("/proc/cpuinfo").is_file():
        assert flags, "no flags parsed from /proc/cpuinfo"
        import platform
        if platform.machine() in ("x86_64", "AMD64"):
            assert "sse2" in flags   # every x86-64 CPU has it
