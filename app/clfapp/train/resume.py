"""`clfapp fit --resume RUN`: train RUN's remaining epochs from its checkpoint and finish it as
`fit` would. Apart from train/checkpoint.py (which reads and checks the checkpoint) because it
calls `train.fit`, which uses the checkpoint module: one of them has to sit above the other."""
from __future__ import annotations

from pathlib import Path

from .. import train
from . import reproducible, schedules
from .checkpoint import lock, open_run, unlock


def resume(folder: Path, started: float | None = None):
    """Continue RUN from its checkpoint, holding its lock meanwhile; returns train.FitResult."""
    lock(folder)
    try:
        return _resume(folder, started)
    finally:
        unlock(folder)


def _resume(folder: Path, started: float | None):
    r = open_run(folder)
    h, cfg = r.header, r.cfg
    if cfg.train.deterministic:
        reproducible.use_threads(h["started"]["threads"])
    total = r.total = sum(schedules.phases(cfg.train, bool(cfg.model.pretrained)))
    if r.training_done:
        print(f"resuming {folder}: its training had ended ({h['epochs_done']} epochs); "
              f"writing its model and report", flush=True)
    else:
        print(f"resuming {folder} after epoch {h['epochs_done'] - 1} ({h['epochs_done']} of "
              f"{total} epochs done, checkpoint of {h['saved']})", flush=True)
    return train.fit(cfg, folder, started=started, checkpoints=True, resume=r)
