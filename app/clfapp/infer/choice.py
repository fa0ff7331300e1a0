"""The end of `fit` chooses how the model is shipped by measuring it: input size and TTA.

The formula of infer/test_size.py (FixRes) and `aug.tta` only propose candidates:
{data.size, the formula's test size when it differs and the arch takes it} x {no TTA, TTA when
aug.tta is on and training flipped}. An explicit data.test_size fixes the size; aug.tta = false
leaves TTA out. Each candidate is the kept epoch's saved bundle run as it would be shipped
(fp32, the Predictor), on the validation split. Each size's views are computed once: no TTA is
the image itself, TTA the mean of every view, so the cost is sizes x views forward passes.

The score is the figure the run reports: single-label accuracy, multi-label the thresholds'
metric (thresholds.metric) at thresholds searched for that candidate. The proposal (the
formula's test size, TTA as aug.tta says) is shipped unless another candidate measures better
with confidence: better in at least CONFIDENCE of paired bootstrap resamples of the validation
images. A validation split of a few dozen images moves by several images between two runs
of the same model, so the plain maximum chased noise: on a 45-image split it preferred no TTA
by 3 images and lost 3 on the 67 held-out ones (bench/inference_choice.py). Among confident
winners the best figure wins, ties broken by the lower log loss (single-label) or the higher
mAP (multi-label), then the cheaper (fewer views, then the smaller size). On two small folders
the formula alone shipped 160 px where 128 px measured 10 points better (catdog 0.775 at 128,
0.675 at 160): a gap that size on a hundred images passes the test.

numpy only: the measured probabilities come from the predictor handed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import metrics
from . import thresholds as thresholds_mod

DECIMALS = 4
"""Figures equal to this many decimals are a tie (the cheaper candidate wins)."""
CONFIDENCE = 0.95
"""A candidate replaces the proposal when it scores higher in this share of the resamples: the
usual one-sided 95 %. At 90 % (tried first) plant seedlings' 354 validation images moved the
choice to 128 px for 9 images (in 94.9 % of resamples) and it lost 1 on the 354 held out."""
RESAMPLES = 1000
"""Paired bootstrap resamples of the validation images (seeded: the choice is reproducible)."""


@dataclass
class Choice:
    size: int
    tta: bool
    probs: np.ndarray
    """The chosen candidate's validation probabilities."""
    search: object = None
    """Multi-label: the chosen candidate's threshold search (thresholds.Search)."""
    record: dict = field(default_factory=dict)
    """metrics.json's `inference`: metric, every candidate's figures, the chosen, the formula's."""


def candidates(size: int, test_size: int, fixed: bool, tta: bool, flips) -> list[tuple[int, bool]]:
    """(size, tta) pairs to measure, cheapest first. `test_size`: the formula's (or the explicit)
    test size the arch takes; `fixed`: data.test_size was given, so it is the only size; `tta`:
    aug.tta; `flips`: the mirrors training used (no mirror, no TTA candidate)."""
    sizes = [test_size] if fixed else sorted({size, test_size})
    ttas = [False, True] if tta and list(flips) else [False]
    return [(s, t) for t in ttas for s in sizes]


def log_loss(probs: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
    """Mean negative log-likelihood of the truth: cross-entropy (single-label) or binary
    cross-entropy per label (multi-label)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    if multi_label:
        t = np.asarray(y).astype(bool)
        return float(-np.mean(np.where(t, np.log(p), np.log(1 - p))))
    y = np.asarray(y, dtype=int)
    return float(-np.mean(np.log(p[np.arange(len(y)), y]))) if len(y) else 0.0


def measured(predictor, pixels: dict, sizes_tta: list[tuple[int, bool]]) -> dict:
    """{(size, tta): validation probabilities} of `predictor` for each candidate; `pixels`:
    {size: N x S x S x 3 uint8}, the same items at each size. Each size's views run once."""
    out = {}
    for s in sorted({s for s, _ in sizes_tta}):
        with_tta = (s, True) in sizes_tta
        views = predictor.probabilities_per_view(pixels[s], tta=with_tta)
        out[(s, False)] = views[0]
        if with_tta:
            out[(s, True)] = tta_mean(views)
    return {k: out[k] for k in sizes_tta}


def tta_mean(views: list[np.ndarray]) -> np.ndarray:
    """TTA's probabilities from each view's: summed in order, then divided, as
    Predictor.forward does (the same figures to the last bit)."""
    total = views[0]
    for v in views[1:]:
        total = total + v
    return total / len(views)


def choose(probs: dict, y: np.ndarray, multi_label: bool, views: dict, formula: tuple[int, bool],
           metric: str = "f1_micro", mode: str = "global", classes: list[str] | None = None) -> Choice:
    """The best of the measured candidates `probs` ({(size, tta): N x C}) against truth `y`.
    `views`: {(size, tta): views run}; `formula`: the candidate the formula and aug.tta alone
    would have shipped; `metric`, `mode`: the multi-label threshold search's."""
    rows, searches = [], {}
    for (size, tta), p in probs.items():
        row = {"size": int(size), "tta": bool(tta), "views": int(views[(size, tta)])}
        if multi_label:
            found = thresholds_mod.search(p, y, metric, mode)
            searches[(size, tta)] = found
            ap = metrics.multi_label(p, y, classes or [str(j) for j in range(p.shape[1])],
                                     found.thresholds)["map"]
            row.update({metric: found.score, "map": ap, "log_loss": log_loss(p, y, True),
                        "thresholds": found.thresholds})
        else:
            pred = p.argmax(axis=1)
            row.update({"accuracy": metrics.accuracy(y, pred), "log_loss": log_loss(p, y, False)})
        rows.append(row)
    name = metric if multi_label else "accuracy"

    def key(r):
        tie = (r["map"] if r["map"] is not None else 0.0) if multi_label else -r["log_loss"]
        return (round(r[name], DECIMALS), round(tie, DECIMALS), -r["views"], -r["size"])

    formula_row = next((r for r in rows if (r["size"], r["tta"]) == tuple(formula)), None)
    if formula_row is None:   # the proposal was not measurable (e.g. a size the arch refuses)
        best = max(rows, key=key)
    else:
        base = _scorer(probs[tuple(formula)], y, multi_label, name, formula_row.get("thresholds"))
        for r in rows:
            if r is not formula_row:
                r["p_better"] = win_rate(_scorer(probs[(r["size"], r["tta"])], y, multi_label,
                                                 name, r.get("thresholds")), base, len(y))
        confident = [r for r in rows if r.get("p_better", 0.0) >= CONFIDENCE]
        best = max(confident, key=key) if confident else formula_row
    chosen = (best["size"], best["tta"])
    record = {"metric": name, "tiebreak": "map" if multi_label else "log_loss",
              "chosen_by": "measurement" if len(rows) > 1 else "config",
              "rule": (f"the proposal unless a candidate scores higher in {CONFIDENCE:.0%} of "
                       f"{RESAMPLES} paired bootstrap resamples of the validation images"),
              "chosen": best, "formula": formula_row, "candidates": rows}
    return Choice(chosen[0], chosen[1], probs[chosen], searches.get(chosen), record)


def _scorer(p: np.ndarray, y: np.ndarray, multi_label: bool, name: str, thresholds):
    """idx (R x n resampled rows) -> R figures of candidate probabilities `p`: accuracy, or the
    multi-label metric at the candidate's own thresholds."""
    if multi_label:
        pred = p >= np.asarray(thresholds)
        return lambda idx: np.array([metrics.f1(y[i], pred[i], name) for i in idx])
    correct = p.argmax(axis=1) == np.asarray(y)
    return lambda idx: correct[idx].mean(axis=1)


def win_rate(candidate, proposal, n: int, seed: int = 0) -> float:
    """The share of paired bootstrap resamples of the n validation images (the same resamples
    for both) in which `candidate` scores strictly higher than `proposal` (scorers of `_scorer`)."""
    if n == 0:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
    return float(np.mean(candidate(idx) > proposal(idx)))


def said(r: dict) -> str:
    """A candidate in words: "160 px, TTA (2 views)"."""
    return f"{r['size']} px, " + (f"TTA ({r['views']} views)" if r["tta"] else "no TTA")


def lines(record: dict, n: int) -> list[str]:
    """report.md's lines: the candidates measured, the chosen and the formula's."""
    name, chosen, formula = record["metric"], record["chosen"], record["formula"]

    def same(a, b):
        return a is not None and (a["size"], a["tta"]) == (b["size"], b["tta"])

    head = (f"Shipped configuration, measured on the validation split ({n} images) by {name}: "
            f"{said(chosen)}, {name} {chosen[name]:.4f}")
    if formula is not None and not same(formula, chosen):
        head += (f"; the proposal ({said(formula)}: test size from training's crops, aug.tta) "
                 f"{formula[name]:.4f}, beaten in {chosen.get('p_better', 0):.0%} of paired "
                 "bootstrap resamples")
    elif formula is not None and len(record["candidates"]) > 1:
        head += (f" (the proposal: test size from training's crops, aug.tta; no candidate scored "
                 f"higher in {CONFIDENCE:.0%} of paired bootstrap resamples)")
    out = [head + ".", ""]
    if len(record["candidates"]) > 1:
        tie = record["tiebreak"]
        out += [f"| size | TTA | views | {name} | {tie} | higher than the proposal in | |",
                "|---|---|---|---|---|---|---|"]
        for r in record["candidates"]:
            mark = ", ".join(w for w, on in (("chosen", same(r, chosen)),
                                             ("proposal", same(formula, r))) if on)
            t, b = r[tie], r.get("p_better")
            out.append(f"| {r['size']} | {'yes' if r['tta'] else 'no'} | {r['views']} | "
                       f"{r[name]:.4f} | {'' if t is None else f'{t:.4f}'} | "
                       f"{'' if b is None else f'{b:.0%}'} | {mark} |")
        out.append("")
    return out
