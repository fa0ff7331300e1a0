"""Architecture name → model: a timm or torchvision backbone with fastai's head.

Names torchvision knows (resnet34, densenet121, alexnet, ...) are torchvision's, as in fastai's
`vision_learner(dls, resnet34)`; any other name is looked up in timm. Prefix `timm:` to take
timm's version of a name both know (`timm:resnet34`). clfapp's own archs (`OWN_ARCHS`, e.g.
`simple_cnn`) come first; they train from scratch only.

`cut_blocks` drops the body's last blocks (torchvision densenets; timm models with feature
stages, through timm's `FeatureListNet`); `head_hidden` sets the hidden sizes of fastai's head.

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


OWN_ARCHS: dict = {}
"""clfapp's own archs: name → function(n_in) returning the body (an nn.Module), from scratch."""


def register(fn):
    """Register a body-building function under its name (timm's `@register_model` idea)."""
    OWN_ARCHS[fn.__name__] = fn
    return fn


@register
def simple_cnn(n_in: int = 3):
    """A small from-scratch CNN (the idl study's baseline): four stages of two 3x3 fastai
    ConvLayers (conv, BN, ReLU; the first of each with stride 2), 32→64→128→256 channels;
    fastai's head (pooling, dense layers with dropout) goes on top. About 1.2 M parameters."""
    import torch.nn as nn
    from fastai.layers import ConvLayer

    layers, c_in = [], n_in
    for c in (32, 64, 128, 256):
        layers += [ConvLayer(c_in, c, ks=3, stride=2), ConvLayer(c, c, ks=3)]
        c_in = c
    return nn.Sequential(*layers)


CUT_SUPPORT = ("model.cut_blocks works for torchvision densenets (densenet121/161/169/201) and timm "
               "models with feature stages (resnets, efficientnets, convnexts, ...)")


def _torchvision_names() -> set[str]:
    import torchvision
    return set(torchvision.models.list_models(module=torchvision.models))


def resolve(arch: str, pretrained: bool = False, cut_blocks: int = 0) -> Arch:
    """Validate `arch` and read its normalisation stats, without building anything. With
    `pretrained` / `cut_blocks` (a fit), refuse what the arch cannot do before any data work."""
    import timm

    forced_timm = arch.startswith("timm:")
    name = arch[5:] if forced_timm else arch
    if not forced_timm and name in OWN_ARCHS:
        if pretrained:
            raise UsageError(f"{name} is clfapp's own arch and has no pretrained weights; train it "
                             f"from scratch with --no-pretrained (model.pretrained = false)")
        if cut_blocks:
            raise UsageError(f"{CUT_SUPPORT}; {name} is not one of them")
        return Arch(name, "clfapp", *IMAGENET_STATS, "bilinear")
    if not forced_timm and name in _torchvision_names():
        if cut_blocks and not name.startswith("densenet"):
            hint = f" (timm:{name} may be)" if timm.is_model(name) else ""
            raise UsageError(f"{CUT_SUPPORT}; torchvision's {name} is not one of them{hint}")
        return Arch(name, "torchvision", *IMAGENET_STATS, "bilinear")
    if timm.is_model(name):
        cfg = timm.models.get_pretrained_cfg(name)
        mean = tuple(getattr(cfg, "mean", None) or IMAGENET_STATS[0])
        std = tuple(getattr(cfg, "std", None) or IMAGENET_STATS[1])
        return Arch(name, "timm", mean, std, getattr(cfg, "interpolation", None) or "bicubic")
    known = sorted(_torchvision_names() | set(timm.list_models()) | set(OWN_ARCHS))
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


def _densenet_cut_split(m, k: int):
    """fastai's `_densenet_split` for a cut densenet: stem + early blocks | last blocks | head."""
    from fastai.torch_core import params
    from fastcore.foundation import L
    return L(m[0][0][:k], m[0][0][k:], m[1:]).map(params)


def _cut_densenet(features, cut_blocks: int, name: str):
    """torchvision densenet `features` without its last `cut_blocks` dense blocks: each goes
    with the transition leading into it; that transition's BatchNorm (the normalisation of the
    last kept block's output) stays as the final norm, in the place of `norm5`."""
    from collections import OrderedDict

    import torch.nn as nn

    children = dict(features.named_children())
    n_blocks = sum(k.startswith("denseblock") for k in children)
    if not 0 < cut_blocks < n_blocks:
        raise UsageError(f"model.cut_blocks = {cut_blocks}: {name} has {n_blocks} dense blocks; "
                         f"cut 1 to {n_blocks - 1} of them")
    last = n_blocks - cut_blocks
    keep = {}
    for k, mod in children.items():
        keep[k] = mod
        if k == f"denseblock{last}":
            break
    keep["norm_cut"] = children[f"transition{last}"].norm
    return nn.Sequential(OrderedDict(keep))


def _timm_cut(net, cut_blocks: int, name: str):
    """A timm model's body up to the end of its stage `len(stages) - 1 - cut_blocks` (timm's
    `FeatureListNet`, which drops every module after it), returning that stage's feature map;
    and its channel count."""
    import torch.nn as nn
    from timm.models import FeatureListNet

    info = getattr(net, "feature_info", None)
    reductions = [d.get("reduction", 0) for d in info or []]
    if not info or any(a >= b for a, b in zip(reductions, reductions[1:])):
        # none, or not a CNN's stages of shrinking resolution (a ViT's blocks all have 16)
        raise UsageError(f"{CUT_SUPPORT}; timm's {name} has no such stages")
    n = len(info)
    if not 0 < cut_blocks < n - 1:
        raise UsageError(f"model.cut_blocks = {cut_blocks}: timm's {name} has {n} feature stages; "
                         f"cut 1 to {n - 2} of them")

    class LastStage(nn.Sequential):  # a Sequential, so fastai's splitters and hooks walk it
        def forward(self, x):
            return self[0](x)[-1]

    idx, error = n - 1 - cut_blocks, None
    for flatten in (False, True):  # timm flattens some models' stages (efficientnets), not others
        try:
            return LastStage(FeatureListNet(net, out_indices=(idx,), flatten_sequential=flatten)), \
                info[idx]["num_chs"]
        except Exception as e:  # a model timm cannot take apart this way
            error = error or e
    raise UsageError(f"{CUT_SUPPORT}; timm cannot cut {name}: {str(error).splitlines()[0]}")


def build(arch: Arch, n_out: int, dropout: float = 0.5, concat_pool: bool = True,
          backbone_state: dict | None = None, weights_source: str = "", head_hidden: str = "",
          cut_blocks: int = 0):
    """The fastai-style model (body + head) and the parameter-group splitter for freezing.

    `backbone_state` (from `weights.resolve`) is loaded strictly into the body (before any
    cut): every tensor must fit, or the user hears which ones did not. `head_hidden` is
    model.head_hidden (fastai's `lin_ftrs`), `cut_blocks` model.cut_blocks.
    """
    import functools

    import torch.nn as nn
    from fastai.vision.learner import (TimmBody, add_head, create_body, default_split,
                                       num_features_model)

    from .compat import timm_body_needs_pool, torchvision_meta

    from ..config import parse_head_hidden

    lin_ftrs = parse_head_hidden(head_hidden)
    if arch.source == "clfapp":
        if cut_blocks:
            raise UsageError(f"{CUT_SUPPORT}; {arch.name} is not one of them")
        body = OWN_ARCHS[arch.name](3)
        nf, pool, splitter = num_features_model(body), True, default_split
    elif arch.source == "timm":
        import timm
        net = timm.create_model(arch.name, pretrained=False, num_classes=0)
        if backbone_state is not None:
            _load_strict(net, backbone_state, arch.name, weights_source)
        if cut_blocks:
            (body, nf), pool, splitter = _timm_cut(net, cut_blocks, arch.name), True, default_split
        else:
            body = TimmBody(net, backbone_state is not None, None, 3)
            nf, pool, splitter = net.num_features, timm_body_needs_pool(body), default_split
    else:
        import torchvision
        fn = getattr(torchvision.models, arch.name)
        net = fn(weights=None)
        if backbone_state is not None:
            _load_strict(net, backbone_state, arch.name, weights_source)
        meta = torchvision_meta(fn)
        if cut_blocks and not arch.name.startswith("densenet"):
            raise UsageError(f"{CUT_SUPPORT}; torchvision's {arch.name} is not one of them")
        if cut_blocks:  # fastai's densenet body is Sequential(features); cut inside it
            body = nn.Sequential(_cut_densenet(net.features, cut_blocks, arch.name))
            splitter = functools.partial(_densenet_cut_split, k=max(1, len(body[0]) - 3))
        else:
            body = create_body(net, 3, backbone_state is not None, meta["cut"])
            splitter = meta["split"]
        nf, pool = num_features_model(nn.Sequential(*body.children())), True
    model = add_head(body, nf, n_out, ps=dropout, concat_pool=concat_pool, pool=pool,
                     lin_ftrs=lin_ftrs)
    return model, splitter


def blank_pass(module, size: int):
    """`module`'s output for one blank `size` x `size` image, in eval mode without gradients,
    its train mode put back: the shape checks made before training (check_input, the test
    size, schedules.early_layers)."""
    import torch

    param = next(module.parameters())
    was_training = module.training
    try:
        with torch.no_grad():
            return module.eval()(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    finally:
        module.train(was_training)


def check_input(model, arch: str, size: int) -> None:
    """One forward pass of a blank image at `size`: a net that shrinks it to nothing (alexnet
    below 63 px) is refused in one line before training, not with a stack trace in epoch 1."""
    try:
        blank_pass(model, size)
    except RuntimeError as e:
        raise UsageError(f"data.size = {size} is too small for {arch} (raise --size): "
                         f"{str(e).splitlines()[0]}")


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(model, arch: str, cut_blocks: int = 0) -> str:
    """The line fit prints at its start: "model: densenet121 (cut 1 block), 5.3 M parameters"."""
    cut = f" (cut {cut_blocks} block{'s' if cut_blocks > 1 else ''})" if cut_blocks else ""
    return f"model: {arch}{cut}, {n_parameters(model) / 1e6:.2f} M parameters"
