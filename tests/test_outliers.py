"""Outlier scores (clfapp.infer.outliers): an image unlike every class scores highest, by both
methods; the scores follow from the features as documented."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clfapp.infer import outliers
from clfapp.infer.features import normalise

SIZE = 64


def thumbnail_features(pixels: np.ndarray) -> np.ndarray:
    """A cheap stand-in for the pretrained net: the 8x8 thumbnail, its mean taken out."""
    b, s = len(pixels), pixels.shape[1]
    x = pixels.astype(np.float32).reshape(b, 8, s // 8, 8, s // 8, 3).mean((2, 4)).reshape(b, -1)
    return x - x.mean(1, keepdims=True)


def class_image(path, base, seed):
    """A member of a class: the class's own smooth picture (`base`, 4x4 colours) with noise."""
    rng = np.random.default_rng(seed)
    grid = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((64, 64), Image.Resampling.BICUBIC).save(path)
    return str(path)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(1)
    paths, labels = [], []
    for c in ("a", "b", "c"):
        base = rng.integers(40, 216, (4, 4, 3)).astype(np.float64)
        for i in range(8):
            paths.append(class_image(tmp_path / c / f"{c}{i}.png", base, seed=100 + len(paths)))
            labels.append(c)
    odd = tmp_path / "b" / "odd.png"
    checker = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker, 255 - checker, checker // 2], -1)).save(odd)
    paths.insert(5, str(odd))
    labels.insert(5, "b")
    return paths, labels, str(odd)


@pytest.mark.parametrize("method", outliers.METHODS)
def test_odd_image_scores_highest(data, method):
    paths, labels, odd = data
    table = outliers.find(paths, labels, method=method, feature_fn=thumbnail_features, size=SIZE,
                          progress=False)
    assert list(table.columns) == ["path", "label", "score"]
    assert len(table) == len(paths) and table["path"].iloc[0] == odd
    assert table["score"].is_monotonic_decreasing
    # clearly apart, not by a hair: the odd one's score well above every class member's
    assert table["score"].iloc[0] > 2 * table["score"].iloc[1]


def test_scores_from_features():
    x = normalise(np.array([[1, 0], [1, 0.1], [1, -0.1], [0, 1]], dtype=np.float32))
    knn = outliers.knn_scores(x, k=1)
    assert np.argmax(knn) == 3
    assert knn[0] == pytest.approx(1 - x[0] @ x[1], abs=1e-6)   # its own row left out
    cen = outliers.centroid_scores(x, ["p", "p", "p", "q"])
    assert cen[3] == pytest.approx(0, abs=1e-6)   # alone in its class: it is its centroid
    assert outliers.centroid_scores(x, ["p", "p", "p", "p"]).argmax() == 3
    with pytest.raises(ValueError, match="unknown outlier method"):
        outliers.score(x, method="nope")


@pytest.mark.slow  # 4-20 s: converts the pip weights once (per session), loads lite0
def test_pretrained_features_single_out_a_cat_among_textures(tmp_path):
    """The real tf_efficientnet_lite0 features: a photo of a cat filed among crops of three
    textures (brick, grass, gravel) is the top outlier by both methods."""
    import skimage.data

    paths, labels = [], []
    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        a = np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        for i in range(4):
            y, x = rng.integers(0, a.shape[0] - 200), rng.integers(0, a.shape[1] - 200)
            p = tmp_path / name / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a[y:y + 200, x:x + 200]).save(p)
            paths.append(str(p))
            labels.append(name)
    cat = tmp_path / "grass" / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(cat)
    paths.append(str(cat))
    labels.append("grass")
    from clfapp.infer.features import image_features
    x, kept = image_features(paths, progress=False)
    assert kept == list(range(len(paths)))
    for method in outliers.METHODS:
        table = outliers.find(paths, labels, method=method, features=x, k=3)
        assert table["path"].iloc[0] == str(cat), method
