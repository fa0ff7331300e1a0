"""Grad-CAM (Selvaraju et al. 2017) with plain torch hooks, for any model clfapp builds.

The feature map used is the last one the model computes that still has a spatial extent: the
output of the last module, in execution order, that returns an N x C x H x W tensor with
H x W > 1. For fastai's body + head models that is the body's output (the pooling layer's
N x C x 1 x 1 is skipped), whatever the arch: timm, torchvision, clfapp's own CNN, a cut
densenet. The class map is relu(sum_c mean(d score / d A_c) * A_c), upsampled to the image.
"""
from __future__ import annotations

import numpy as np


def heatmaps(model, x, classes: list[int]) -> np.ndarray | None:
    """N x H x W maps in [0, 1] for the normalised batch `x` (N x 3 x H x W float), each for
    its class in `classes`; None when the model has no 4-D feature map to explain.

    One forward and one backward pass: a hook on every module keeps the latest 4-D output
    (hooks fire when a module finishes, so a container's output comes after its children's),
    preferring one with a spatial extent."""
    import torch
    import torch.nn.functional as F

    model.eval()
    last = {}

    def record(_module, _inputs, output):
        if torch.is_tensor(output) and output.dim() == 4 and output.requires_grad:
            last["any"] = output
            if output.shape[-2] * output.shape[-1] > 1:
                last["spatial"] = output
    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)  # a graph even if the weights are frozen
            logits = model(x)
            act = last.get("spatial", last.get("any"))
            if act is None:
                return None
            act.retain_grad()
            model.zero_grad(set_to_none=True)
            logits.gather(1, torch.as_tensor(classes).view(-1, 1)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    if act.grad is None:   # that map did not lead to the scores (a side branch)
        return None
    act, grad = act.detach().float(), act.grad.detach().float()
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.flatten(1).min(dim=1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-8)).numpy()


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image (H x W x 3 uint8) with `heat` (H x W in [0, 1]) blended on in the jet colours."""
    from matplotlib import colormaps
    colour = colormaps["jet"](heat)[..., :3] * 255.0
    return np.clip((1 - alpha) * pixels + alpha * colour, 0, 255).astype(np.uint8)


def for_images(predictor, pixels: np.ndarray, classes: list[int]) -> list[np.ndarray] | None:
    """Overlays for decoded images (N x S x S x 3 uint8) through a Predictor's model and its
    normalisation (`predictor.normalise`); None when the model has nothing to explain."""
    import torch

    model = predictor.model.float().to(memory_format=torch.contiguous_format)
    x01 = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
    x = predictor.normalise(x01)
    heat = heatmaps(model, x, classes)
    if heat is None:
        return None
    return [overlay(p, h) for p, h in zip(pixels, heat)]
