"""Outliers: images unlike every class of the data set.

Each image becomes its pretrained feature vector (infer/features.py, unit length). Its score is
how far it sits from what the data holds, in cosine distance (1 - similarity, 0..2):

  * "knn" (the default): the mean distance to its `K` nearest training images, itself left out;
  * "centroid": the distance to the nearest class centroid (the mean feature of each class's
    training images).

bench/outliers.py measured both on 30 CIFAR-10 images planted among the plant seedlings
(see METHOD). Feature extraction is the cost: 3349 images in 110 s at 128 px on 2 shared CPU
cores (about 30 a second); the scores themselves take under a second for 3k images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .features import FEATURE_SIZE, FeatureFn, image_features, normalise, top_similar

K = 5
"""Nearest training images whose mean distance is an image's "knn" score: a few, so that one
stray look-alike does not hide an outlier, and few enough that a small class is still its own
neighbourhood."""

METHOD = "knn"
"""Which score `find` uses unless told. bench/outliers.py (30 CIFAR-10 images planted among the
3319 plant seedlings of train/, 128 px features): both methods put all 30 among the top 60; among
the top 30, "knn" (K=5) 27 and "centroid" 26. "knn" also needs no labels and keeps a class
made of several looks (one centroid sits between them)."""

METHODS = ("knn", "centroid")


def knn_scores(features: np.ndarray, reference: np.ndarray | None = None, k: int = K,
               chunk: int = 1024) -> np.ndarray:
    """Mean cosine distance of each row of `features` to its `k` nearest rows of `reference`
    (default: `features` themselves, each row's own left out). Unit-length rows expected."""
    _, sim = top_similar(features, reference, k=k, chunk=chunk)
    if sim.shape[1] == 0:
        return np.zeros(len(features), np.float32)
    return (1.0 - sim.mean(1)).astype(np.float32)


def centroid_scores(features: np.ndarray, labels, reference: np.ndarray | None = None,
                    reference_labels=None) -> np.ndarray:
    """Cosine distance of each row of `features` to the nearest class centroid, the centroids
    made from `reference` (default `features`) and its labels (default `labels`)."""
    ref = features if reference is None else reference
    ref_labels = np.asarray(labels if reference_labels is None else reference_labels, dtype=object)
    classes = sorted(set(ref_labels.tolist()), key=str)
    if not classes:
        return np.zeros(len(features), np.float32)
    centroids = normalise(np.stack([ref[ref_labels == c].mean(0) for c in classes]))
    return (1.0 - (features @ centroids.T).max(1)).astype(np.float32)


def score(features: np.ndarray, labels=None, method: str = METHOD, k: int = K) -> np.ndarray:
    """Outlier scores of unit-length `features` (higher: more unlike the rest); `labels` (one
    per row) are needed by "centroid" only."""
    if method == "knn":
        return knn_scores(features, k=k)
    if method == "centroid":
        if labels is None:
            raise ValueError("the centroid score needs the labels")
        return centroid_scores(features, labels)
    raise ValueError(f"unknown outlier method {method!r}; one of {', '.join(METHODS)}")


def find(paths: list[str], labels=None, method: str = METHOD, k: int = K,
         feature_fn: FeatureFn | None = None, size: int = FEATURE_SIZE, progress: bool = True,
         features: np.ndarray | None = None) -> pd.DataFrame:
    """Outlier scores of `paths` (training images, with their `labels` when known): a table of
    path, label, score, highest score first. `features`: precomputed unit-length rows, one per
    path, instead of running `feature_fn`; an unreadable file is left out (with a warning)."""
    paths = [str(p) for p in paths]
    labels = list(labels) if labels is not None else [None] * len(paths)
    if features is None:
        features, kept = image_features(paths, feature_fn, size, progress=progress)
        paths, labels = [paths[i] for i in kept], [labels[i] for i in kept]
    s = score(features, labels if method == "centroid" else None, method, k)
    out = pd.DataFrame({"path": paths, "label": labels, "score": s})
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
