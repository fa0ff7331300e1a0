"""Architecture name → model: a timm or torchvision backbone with fastai's head.

Names torchvision knows (resnet34, densenet121, alexnet, ...) are torchvision's, as in fastai's
`vision_learner(dls, resnet34)`; any other name is looked up in timm. Prefix `timm:` to take
timm's version of a name both know (`timm:resnet34`).

The same `build` makes the model for training and for loading a bundle, so a bundle rebuilds
exactly what was trained.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..errors import UsageError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class Arch:
    name: str            # the name inside its library
    source: str          # "timm" | "torchvision"
    mean: tuple
    std: tuple
    interpolation: str


def _torchvision_names() -> set[str]:
    import torchvision
    return set(torchvision.models.list_models(module=torchvision.models))


def resolve(arch: str) -> Arch:
    """Validate `arch` and read its normalisation stats, without building anything."""
    import timm

    forced_timm = arch.startswith("timm:")
    name = arch[5:] if forced_timm else arch
    if not forced_timm and name in _torchvision_names():
        return Arch(name, "torchvision", *IMAGENET_STATS, "bilinear")
    if timm.is_model(name):
        cfg = timm.models.get_pretrained_cfg(name)
        mean = tuple(getattr(cfg, "mean", None) or IMAGENET_STATS[0])
        std = tuple(getattr(cfg, "std", None) or IMAGENET_STATS[1])
        return Arch(name, "timm", mean, std, getattr(cfg, "interpolation", None) or "bicubic")
    known = sorted(_torchvision_names() | set(timm.list_models()))
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise UsageError(f"unknown arch {arch!r}: neither timm nor torchvision has it{hint}")


def _load_strict(module, state: dict, arch: str, source: str) -> None:
    missing, unexpected = [], []
    try:
        result = module.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    except RuntimeError as e:  # shape mismatches
        raise UsageError(f"weights from {source} do not fit {arch}: {str(e).splitlines()[-1].strip()}")
    if missing or unexpected:
        raise UsageError(f"weights from {source} do not fit {arch}: {len(missing)} missing "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def build(arch: Arch, n_out: int, dropout: float = 0.5, concat_pool: bool = True,
          backbone_state: dict | None = None, weights_source: str = ""):
    """The fastai-style model (body + head) and the parameter-group splitter for freezing.

    `backbone_state` (from `weights.resolve`) is loaded strictly into the body: every tensor
    must fit, or the user hears which ones did not.
    """
    import torch.nn as nn
    from fastai.vision.learner import (TimmBody, _default_meta, add_head, create_body,
                                       default_split, model_meta, num_features_model)

    if arch.source == "timm":
        import timm
        net = timm.create_model(arch.name, pretrained=False, num_classes=0)
        if backbone_state is not None:
            _load_strict(net, backbone_state, arch.name, weights_source)
        body = TimmBody(net, backbone_state is not None, None, 3)
        nf, pool, splitter = net.num_features, body.needs_pool, default_split
    else:
        import torchvision
        fn = getattr(torchvision.models, arch.name)
        net = fn(weights=None)
        if backbone_state is not None:
            _load_strict(net, backbone_state, arch.name, weights_source)
        meta = model_meta.get(fn, _default_meta)
        body = create_body(net, 3, backbone_state is not None, meta["cut"])
        nf, pool, splitter = num_features_model(nn.Sequential(*body.children())), True, meta["split"]
    model = add_head(body, nf, n_out, ps=dropout, concat_pool=concat_pool, pool=pool)
    return model, splitter
