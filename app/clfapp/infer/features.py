"""Pretrained image features for finding data issues (outliers: images unlike every class).

An ImageNet-pretrained body (tf_efficientnet_lite0 by default: its weights ship offline in a pip
package, DESIGN.md §5) turns each image into its pooled feature vector, L2-normalised so that a
dot product is the cosine similarity. Images are decoded and fed in batches: memory stays at one
batch of pixels plus the N x D feature matrix (N x 1280 float32: 51 MB for 10k images).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

FEATURE_ARCH = "tf_efficientnet_lite0"
FEATURE_SIZE = 128
"""Pixels per side the images are squashed to before the net: enough for ImageNet features to
tell 32 px CIFAR-10 images planted among 150 px plant seedlings (bench/outliers.py), and about
3x cheaper than 224 px on a 2-core CPU."""

FeatureFn = Callable[[np.ndarray], np.ndarray]
"""Pixels (B x S x S x 3 uint8) → features (B x D float), e.g. `pretrained_feature_fn()`."""


def pretrained_feature_fn(arch: str = FEATURE_ARCH) -> FeatureFn:
    """A function from uint8 pixel batches to pooled features of `arch`'s pretrained body,
    its weights found by `models.weights.resolve` and loaded strictly (never a random body)."""
    import timm

    from ..models import resolve
    from ..models.weights import resolve as resolve_weights

    spec = resolve(arch, pretrained=True)
    weights = resolve_weights(spec.source, spec.name)
    net = timm.create_model(spec.name, pretrained=False, num_classes=0)
    net.load_state_dict(weights.state, strict=True)  # every tensor, or an error: never a random body
    net.eval()
    return module_feature_fn(net, spec.mean, spec.std)


def module_feature_fn(net, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> FeatureFn:
    """Wrap a torch module that maps normalised N x 3 x S x S images to N x D (or N x C x H x W,
    average-pooled) into a `FeatureFn`."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def run(pixels: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            y = net((x - m) / s)
        if y.ndim == 4:
            y = y.mean((2, 3))
        return y.float().numpy()

    return run


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def image_features(paths: list[str], feature_fn: FeatureFn | None = None, size: int = FEATURE_SIZE,
                   batch: int = 64, progress: bool = True,
                   what: str = "image features") -> tuple[np.ndarray, list[int]]:
    """Unit-length `feature_fn` rows (default: the pretrained net's) of `paths` decoded at
    `size` (N' x D float32), and the indices of the readable paths (an unreadable file is
    skipped with a warning naming it, as fit does); `what` names the progress bar."""
    from fastprogress.fastprogress import progress_bar

    from ..data.images import read_many

    feature_fn = feature_fn or pretrained_feature_fn()
    starts = range(0, len(paths), batch)
    if progress and len(paths) > 3 * batch:
        starts = progress_bar(starts)
        starts.comment = what
    out, kept = [], []
    for i in starts:
        pixels, ok = read_many(paths[i:i + batch], size, "squish", progress=False)
        if len(ok):
            out.append(normalise(feature_fn(pixels)))
            kept += [i + j for j in ok]
    if not out:
        return np.zeros((0, 0), np.float32), []
    return np.concatenate(out), kept


def top_similar(a: np.ndarray, b: np.ndarray | None = None, k: int = 1, chunk: int = 1024,
                exclude_self: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `a`, the `k` most cosine-similar rows of `b` (default `a` itself, its own
    row left out): (indices N x k, similarities N x k), most similar first. Unit-length rows are
    expected. The N x M similarity matrix is made `chunk` rows at a time (memory chunk x M)."""
    same = b is None
    b = a if same else b
    n, m = len(a), len(b)
    k = min(k, m - (1 if same and exclude_self else 0))
    idx = np.zeros((n, max(k, 0)), np.int64)
    sim = np.zeros((n, max(k, 0)), np.float32)
    if k <= 0:
        return idx, sim
    for lo in range(0, n, chunk):
        s = a[lo:lo + chunk] @ b.T
        if same and exclude_self:
            rows = np.arange(len(s))
            s[rows, lo + rows] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[lo:lo + len(s)] = np.take_along_axis(part, order, axis=1)
        sim[lo:lo + len(s)] = np.take_along_axis(vals, order, axis=1)
    return idx, sim
