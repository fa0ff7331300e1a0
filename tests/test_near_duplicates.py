"""Near-duplicate finding (clfapp.infer.near_duplicates): altered copies grouped with their
original, distinct images and exact duplicates handled, the chunked similarity search exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clfapp.infer import near_duplicates as nd
from clfapp.infer.features import normalise, top_similar

from conftest import altered_copy


def smooth_image(path: Path, seed: int, size: int = 80) -> Path:
    """A smooth random picture (a 4x4 grid of random colours, upscaled): two seeds give
    unrelated pictures, which resizing or recompressing barely changes."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3)).astype(np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    originals = [smooth_image(tmp_path / "train" / f"img{i}.png", seed=i) for i in range(8)]
    copy = altered_copy(originals[3], tmp_path / "valid" / "copy_of_3.jpg")
    return [str(p) for p in originals], str(copy)


def test_altered_copy_found_across_splits_distinct_not_grouped(images):
    originals, copy = images
    r = nd.find(originals + [copy], exact=[], progress=False)
    assert r.groups == [sorted([originals[3], copy])]
    (pair,) = r.pairs
    assert pair.score >= nd.ABSOLUTE and pair.margin >= nd.MARGIN and not pair.exact
    assert r.group_of() == {originals[3]: 0, copy: 0}


def test_exact_duplicates_reused_not_embedded(images, tmp_path, monkeypatch):
    originals, copy = images
    twin = tmp_path / "valid" / "twin_of_5.png"
    twin.write_bytes(Path(originals[5]).read_bytes())
    paths = originals + [copy, str(twin)]
    assert nd.exact_groups(paths) == [sorted([originals[5], str(twin)])]
    read = []
    real = nd.signatures
    monkeypatch.setattr(nd, "signatures", lambda ps, **kw: (read.extend(ps), real(ps, **kw))[1])
    r = nd.find(paths, progress=False)
    assert len(read) == 9 and str(twin) not in read  # data check's hash says it is the same
    assert sorted(r.groups) == sorted([sorted([originals[3], copy]), sorted([originals[5], str(twin)])])
    exact = [p for p in r.pairs if p.exact]
    assert len(exact) == 1 and exact[0].score == 1.0


def test_rule_keeps_distinct_apart(images):
    """The rule, not the images, keeps distinct ones apart: with every bar lowered all pair up;
    and the floor stops the margin alone from pairing two unlike mutual neighbours."""
    originals, copy = images
    loose = nd.find(originals + [copy], exact=[], progress=False, margin=-9.0, floor=-9.0)
    assert len(loose.groups) == 1 and len(loose.pairs) == 9 * 8 // 2
    x = normalise(np.array([[1, 0, 0], [0.5, 0.866, 0], [-1, 0, 0.1], [0, -1, 1], [0, 0, -1]]))
    # rows 0 and 1 (similarity 0.5) stand far above their neighbourhoods, yet are not alike
    assert [(i, j) for i, j, *_ in nd.similar_pairs(x, k=1, floor=-1.0)] == [(0, 1)]
    assert nd.similar_pairs(x, k=1) == []


def test_chunked_search_matches_full():
    rng = np.random.default_rng(0)
    x = normalise(rng.normal(size=(37, 16)))
    x[20] = x[3] + 0.01
    x = normalise(x)
    full = nd.similar_pairs(x, k=3, margin=0.3, floor=0.0, chunk=1000)
    assert nd.similar_pairs(x, k=3, margin=0.3, floor=0.0, chunk=5) == full
    assert (3, 20) in {(i, j) for i, j, *_ in full}
    idx, sim = top_similar(x, k=3, chunk=4)
    ref = x @ x.T
    np.fill_diagonal(ref, -np.inf)
    np.testing.assert_array_equal(idx, np.argsort(-ref, axis=1)[:, :3])
    np.testing.assert_allclose(sim, -np.sort(-ref, axis=1)[:, :3], rtol=1e-6)
