"""What goes into a bundle's model and what comes out of it, written once: pixels in [0, 1]
are normalised with the model's per-channel mean and std, and logits become probabilities by
a softmax over the classes, or a sigmoid per label for multi-label models. The predictor, the
exported ONNX graph and a distillation teacher all go through these (torch is imported when
called: the ONNX predictor imports nothing of this)."""
from __future__ import annotations


def channel_stats(values, like=None):
    """A 1 x C x 1 x 1 float tensor of per-channel `values` (model.json mean or std), on the
    dtype and device of the tensor `like` when given."""
    import torch
    if like is None:
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def normalise(x01, mean, std):
    """Images in [0, 1] (N x C x H x W) as the model was trained on them: (x - mean) / std."""
    return (x01 - mean) / std


def activate(logits, multi_label: bool):
    """Probabilities from logits: a sigmoid per label (multi-label), else a softmax over classes."""
    return logits.sigmoid() if multi_label else logits.softmax(dim=1)
