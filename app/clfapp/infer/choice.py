"""The end of `fit` chooses how the model is shipped by measuring it: input size and TTA.

The formula of infer/test_size.py (FixRes) and `aug.tta` only propose candidates:
{data.size, the formula's test size when it differs and the arch takes it} x {no TTA, TTA when
aug.tta is on and training flipped}. An explicit data.test_size fixes the size; aug.tta = false
leaves TTA out. Each candidate is the kept epoch's saved bundle run as it would be shipped
(fp32, the Predictor), on the validation split. Each size's views are computed once: no TTA is
the image itself, TTA the mean of every view, so the cost is sizes x views forward passes.

The score is the figure the run reports: single-label accuracy, ties broken by the lower log
loss; multi-label the thresholds' metric (thresholds.metric) at thresholds searched for that
candidate, ties broken by the higher mAP. Where these agree to 4 decimals the cheaper
candidate wins (fewer views, then the smaller size). On two small folders the formula alone
shipped 160 px where 128 px measured 10 points better (catdog 0.775 at 128, 0.675 at 160).

numpy only: the measured probabilities come from the predictor handed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import metrics
from . import thresholds as thresholds_mod

DECIMALS = 4
"""Figures equal to this many decimals are a tie (the cheaper candidate wins)."""


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

    best = max(rows, key=key)
    chosen = (best["size"], best["tta"])
    formula_row = next((r for r in rows if (r["size"], r["tta"]) == tuple(formula)), None)
    record = {"metric": name, "tiebreak": "map" if multi_label else "log_loss",
              "chosen_by": "measurement" if len(rows) > 1 else "config",
              "chosen": best, "formula": formula_row, "candidates": rows}
    return Choice(chosen[0], chosen[1], probs[chosen], searches.get(chosen), record)


def said(r: dict) -> str:
    """A candidate in words: "160 px, TTA (2 views)"."""
    return f"{r['size']} px, " + (f"TTA ({r['views']} views)" if r["tta"] else "no TTA")


def lines(record: dict, n: int) -> list[str]:
    """report.md's lines: the candidates measured, the chosen and the formula's."""
    name, chosen, formula = record["metric"], record["chosen"], record["formula"]

    tie = "the lower log loss" if record["tiebreak"] == "log_loss" else "the higher mAP"
    head = (f"Shipped configuration, chosen on the validation split ({n} images) by {name} "
            f"(ties: {tie}, then the cheaper): {said(chosen)}, {name} {chosen[name]:.4f}")
    def same(a, b):
        return a is not None and (a["size"], a["tta"]) == (b["size"], b["tta"])

    if formula is not None and not same(formula, chosen):
        head += (f"; the formula's ({said(formula)}, test size from training's crops and "
                 f"aug.tta) {formula[name]:.4f}")
    elif formula is not None:
        head += "; the formula's configuration (test size from training's crops, aug.tta) is the same"
    out = [head + ".", ""]
    if len(record["candidates"]) > 1:
        tie = record["tiebreak"]
        out += [f"| size | TTA | views | {name} | {tie} | |", "|---|---|---|---|---|---|"]
        for r in record["candidates"]:
            mark = ", ".join(w for w, on in (("chosen", same(r, chosen)),
                                             ("formula", same(formula, r))) if on)
            t = r[tie]
            out.append(f"| {r['size']} | {'yes' if r['tta'] else 'no'} | {r['views']} | "
                       f"{r[name]:.4f} | {'' if t is None else f'{t:.4f}'} | {mark} |")
        out.append("")
    return out
