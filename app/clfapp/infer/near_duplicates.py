"""Near-duplicate images: resized, recompressed or slightly cropped copies of one picture.

`data check` finds files with identical bytes (a content hash); a copy saved again at another
size or JPEG quality has other bytes. Here each image becomes a small signature: its 8 x 8
colour thumbnail, mean removed, unit length (so a dot product is the thumbnails' correlation).
Two images are a pair when their similarity stands out from their neighbourhoods (a local
scaling, CSLS: the similarity minus the mean of each image's similarities to its K nearest
images after the nearest reaches MARGIN, with the similarity itself at least FLOOR) or is
near-identical outright (at least ABSOLUTE). Pairs chain into groups. The exact-duplicate groups that `data check` found
are reused: one member of each is read, the others join its group with score 1.

Why this and not a global threshold, pretrained features or a perceptual hash: measured by
bench/near_duplicates.py (300 planted copies among 5027 plant seedlings and CIFAR-10 images;
resize ±10 %, JPEG quality 50, 5 % crop), recall / precision over the planted pairs (seed 0):
  * this thumbnail with this rule: 0.957 / 0.951; with a global threshold 0.984 / 0.139 (cos
    0.85), 0.905 / 0.605 (0.90) or 0.702 / 0.938 (0.95): photos of one data set differ in how
    alike they are (seedlings on gravel are all alike), so no single threshold fits;
  * tf_efficientnet_lite0 features pooled over the image (128 px): 0.695 / 0.007 at cos 0.80,
    0.367 / 0.974 with this rule: they say what is in a picture, not which picture it is;
  * ImageHash's pHash (64 bits): 0.826 / 0.919 at Hamming distance 12, 0.816 / 0.957 with this
    rule.
Plant seedlings itself holds real near-duplicates (one seedling photographed twice, often once
in train/ and once in valid/): the bench counts pairs of two originals apart; they are findings.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .features import image_features, top_similar

THUMBNAIL = 8
"""Pixels per side of the colour thumbnail that is an image's signature (the image squashed to
32 px, then averaged over 4 x 4 blocks): coarse enough that a 5 % crop moves it by under half a
pixel and JPEG blocks average out; the margin, not fine detail, tells two seedlings apart
(16 px measured no better: see MARGIN)."""

K = 5
"""Nearest images whose mean similarity is an image's neighbourhood level (CSLS's k), the
nearest one left out: it is the candidate copy itself, and counting it would lower the margin
of every image that has one copy by its own score / K."""

MARGIN = 0.15
"""How far above the mean of the two images' neighbourhood levels a pair's similarity must be.
Chosen by bench/near_duplicates.py among round values (0.05 to 0.20 by 0.05; K 5 and 10; 8 and
16 px; the nearest neighbour in the level or not), the one that passed recall and precision
0.95 on the planted copies of three seeds (0: 0.957 / 0.951; 1: 0.964 / 0.964; 2: 0.970 /
0.958); not tuned further. Most of the pairs the bench counts as wrong are the same seedling
photographed twice (real near-duplicates no truth list names): the precision is a floor."""

FLOOR = 0.60
"""The least similarity for a pair found by the margin: in a small or varied folder two unlike
images can be each other's nearest; planted copies scored at least 0.69 (bench)."""

ABSOLUTE = 0.95
"""A similarity from which two images are a pair whatever their neighbourhoods: several near-
identical copies of one image lift each other's neighbourhood level and would hide from the
margin."""

SCAN = 32   # pixels images are decoded at (then averaged down to THUMBNAIL)


@dataclass
class Pair:
    a: str
    b: str
    score: float      # similarity of the two thumbnails (correlation, -1..1); 1.0 for identical files
    margin: float     # score minus the mean neighbourhood level of the two (CSLS); 1.0 for identical files
    exact: bool = False


@dataclass
class Result:
    groups: list = field(default_factory=list)   # lists of paths, each sorted, largest group first
    pairs: list = field(default_factory=list)    # Pair, highest score first

    def group_of(self) -> dict:
        """path → index of its group in `groups`."""
        return {p: g for g, members in enumerate(self.groups) for p in members}


def exact_groups(paths: list[str], threads: int = 4) -> list[list[str]]:
    """Groups of files with identical bytes, by `data check`'s own content hash (for callers
    without a `data check` report at hand: its `duplicates` are the same groups)."""
    from collections import defaultdict
    from concurrent.futures import ThreadPoolExecutor

    from ..data.check import inspect

    by_digest = defaultdict(list)
    with ThreadPoolExecutor(threads) as pool:
        for p, info in zip(paths, pool.map(inspect, paths)):
            if info.digest:
                by_digest[info.digest].append(p)
    return [sorted(g) for g in by_digest.values() if len(g) > 1]


def signatures(paths: list[str], batch: int = 1024, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """Unit-length thumbnail signatures (N' x 3·THUMBNAIL² float32) and the indices of the
    readable paths (an unreadable file is skipped with a warning naming it)."""
    x, kept = image_features(paths, _thumbnail, SCAN, batch, progress, "thumbnails")
    return (x, kept) if kept else (np.zeros((0, 3 * THUMBNAIL ** 2), np.float32), [])


def _thumbnail(px: np.ndarray) -> np.ndarray:
    """Decoded SCAN px images -> THUMBNAIL px colour thumbnails (block means), flattened and
    centred per image (its mean brightness taken off)."""
    f = SCAN // THUMBNAIL
    t = px.astype(np.float32).reshape(len(px), THUMBNAIL, f, THUMBNAIL, f, 3).mean((2, 4))
    t = t.reshape(len(px), -1)
    return t - t.mean(1, keepdims=True)


def similar_pairs(x: np.ndarray, k: int = K, margin: float = MARGIN, floor: float = FLOOR,
                  absolute: float = ABSOLUTE, chunk: int = 1024) -> list[tuple[int, int, float, float]]:
    """(i, j, similarity, margin) for every pair i < j of the unit-length rows of `x` that the
    rule of the module docstring calls near-duplicates; the N x N similarities are made `chunk`
    rows at a time (memory chunk x N)."""
    if len(x) < 2:
        return []
    _, near = top_similar(x, k=k + 1, chunk=chunk)
    level = near[:, 1:].mean(1) if near.shape[1] > 1 else np.zeros(len(x), np.float32)
    out = []
    for lo in range(0, len(x), chunk):
        s = x[lo:lo + chunk] @ x.T
        m = s - level[lo:lo + chunk, None] / 2 - level[None, :] / 2
        rows, cols = np.nonzero(((m >= margin) & (s >= floor)) | (s >= absolute))
        keep = cols > lo + rows
        for r, c in zip(rows[keep], cols[keep]):
            out.append((int(lo + r), int(c), float(s[r, c]), float(m[r, c])))
    return out


def _union_groups(n: int, edges) -> list[list[int]]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return [g for g in members.values() if len(g) > 1]


def to_embed(paths: list[str], exact: list[list[str]]) -> list[int]:
    """Indices of `paths` that need a signature: all but the second and later members of each
    exact-duplicate group (identical bytes, identical signature)."""
    skip = {p for g in exact for p in sorted(g)[1:]}
    return [i for i, p in enumerate(paths) if p not in skip]


def find(paths: list[str], exact: list[list[str]] | None = None, progress: bool = True,
         features: np.ndarray | None = None, **rule) -> Result:
    """Near-duplicate groups among `paths` (splits mixed: a group across train/valid shows by
    its members' paths). `exact`: `data check`'s groups of identical files (found with
    `exact_groups` when None). `features`: precomputed unit-length rows for the paths
    `to_embed` names, instead of the thumbnails; `rule`: k, margin, floor, absolute."""
    paths = list(dict.fromkeys(str(p) for p in paths))
    exact = exact_groups(paths) if exact is None else [sorted(str(p) for p in g) for g in exact]
    index = {p: i for i, p in enumerate(paths)}
    embed = to_embed(paths, exact)
    if features is None:
        features, kept = signatures([paths[i] for i in embed], progress=progress)
        embed = [embed[k] for k in kept]
    pairs, edges = [], []
    for i, j, s, m in similar_pairs(features, **rule):
        a, b = embed[i], embed[j]
        edges.append((a, b))
        pairs.append(Pair(paths[a], paths[b], s, m))
    for g in exact:
        ids = [index[p] for p in g if p in index]
        for b in ids[1:]:
            edges.append((ids[0], b))
            pairs.append(Pair(paths[ids[0]], paths[b], 1.0, 1.0, exact=True))
    groups = [sorted(paths[i] for i in g) for g in _union_groups(len(paths), edges)]
    groups.sort(key=lambda g: (-len(g), g[0]))
    pairs.sort(key=lambda p: (-p.score, p.a, p.b))
    return Result(groups, pairs)
