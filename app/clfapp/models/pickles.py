"""Refusing pickled model files by name and content: loading one runs whatever code its author
put in it (fastai's export.pkl, torch.save of a whole model, joblib). The run-folder
helpers (models/runs.py) and the bundle reader (infer/bundle.py) both refuse them."""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

PICKLE_SUFFIXES = {".pkl", ".pickle", ".pth", ".pt", ".ckpt", ".bin", ".joblib", ".dill"}
WHY_NO_PICKLE = ("clfapp never loads pickled models: opening one runs any code its author put "
                 "in it. Give a run folder (model/ holds weights.safetensors + model.json); a "
                 "plain state_dict can start a fit as pretrained weights with --weights FILE "
                 "(tensors only)")


def is_pickle(path: Path) -> bool:
    """A pickle or a torch.save file, by its suffix or its first bytes (pickle protocol 2+
    starts with 0x80; torch.save writes a zip archive holding data.pkl)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head[:1] == b"\x80":
        return True
    if head == b"PK\x03\x04":
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith("data.pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def refuse_pickle(path: Path, what: str = "") -> None:
    """UsageError saying why when `path` is a pickled model file."""
    path = Path(path)
    if path.is_file() and is_pickle(path):
        raise UsageError(f"{what}{path} is a pickle file; {WHY_NO_PICKLE}")
