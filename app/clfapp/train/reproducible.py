"""Seeds, deterministic mode, and what a run records to be rebuilt.

`train.seed` (--seed) seeds python, numpy and torch before the model is built (fastai's
set_seed), which fixes the initial weights, the augmentation draws (fastai's batch transforms
and MixUp/CutMix draw from torch and python), and the order of the training batches (fastai's
DataLoader shuffles with a random.Random seeded from python's; its worker processes, with
train.workers > 0, are seeded from torch's). The split does not follow it: it has its own seed,
`data.seed` (--split-seed), so runs with different training seeds share one validation set.

`train.deterministic` (--deterministic) adds what makes a rerun bit-for-bit equal rather than
equal up to rounding: torch's deterministic algorithms (an op without a deterministic kernel
raises instead of running), cuDNN without autotuning (on a GPU), cuBLAS's fixed workspace, and
on `--resume` the thread count the run started with (a float sum split over another number of
threads rounds differently). On one CPU with the same versions and thread count, clfapp's runs
measured equal without it too (tests/test_determinism.py checks the flag's runs bit for bit).
"""
from __future__ import annotations

import os
import platform


def seed(t) -> None:
    """Seed everything for a fit (a TrainConfig `t`), deterministic mode on or off as asked:
    set explicitly either way, so one process running several fits (tests, tune) does not keep
    an earlier fit's setting."""
    import torch
    from fastai.torch_core import set_seed

    if t.deterministic:
        # read by cuBLAS when CUDA starts; without it deterministic mode refuses cuBLAS matmuls
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(t.deterministic))
    torch.backends.cudnn.deterministic = bool(t.deterministic)
    if t.deterministic:
        torch.backends.cudnn.benchmark = False
    set_seed(t.seed, reproducible=bool(t.deterministic))


def use_threads(n: int) -> None:
    """Run on `n` threads (a resumed deterministic run: the count it started with)."""
    import torch
    if n and torch.get_num_threads() != n:
        print(f"note: {n} threads, as when the run started (it had {torch.get_num_threads()})",
              flush=True)
        torch.set_num_threads(n)


def library_versions() -> dict:
    """The versions a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for pkg in ("clfapp", "torch", "torchvision", "timm", "fastai", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def record(cfg) -> dict:
    """metrics.json's "reproducibility": the seeds, the mode, the threads, the versions."""
    import torch
    return {"seed": cfg.train.seed, "split_seed": cfg.data.seed,
            "deterministic": bool(cfg.train.deterministic), "threads": torch.get_num_threads(),
            "versions": library_versions()}
