"""The inference configuration fit chooses by measurement, against the one the formula alone
gives (issue 24): chosen on validation, scored on items the choice never saw.

    python bench/inference_choice.py fit   [--out /tmp/clfapp-inference-choice] [--budget 8m]
    python bench/inference_choice.py score [--out ...]

`fit` trains one run per dataset, each with a test split that neither the best epoch nor the
inference choice sees: plant seedlings with a seeded half of valid/ marked `test` (a label CSV
with a split column beside links to the shared folders), idl and the three folders of
bench/small_folders.py with data.test_pct = 0.3 (idl 0.2; the folders twice, data.seed 42 and
1), and the CIFAR-10 subset (its test/ folder).

`score` reads each run: the candidates fit measured on validation (metrics.json
`inference.candidates`, its choice `inference.chosen`), and measures on the test split the
chosen configuration and the formula's (FixRes test size, TTA as aug.tta says), through the
same inference spec every command runs a model with. It prints per dataset both test figures,
their difference in images, and the mean gain.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from runner import timed

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets"
sys.path.insert(0, str(HERE))


def plants_with_held_out_half(out: Path) -> Path:
    """A label CSV over plant seedlings' train/ and valid/ (linked, never copied) with a seeded
    half of valid/ marked test."""
    folder = out / "plants"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        link = folder / split
        if not link.exists():
            link.symlink_to(SHARED / "plant_seedlings" / split)
    csv = folder / "labels.csv"
    if not csv.exists():
        rows = [(str(p.relative_to(folder)), p.parent.name, split)
                for split in ("train", "valid") for p in sorted((folder / split).glob("*/*"))]
        df = pd.DataFrame(rows, columns=["fname", "label", "split"])
        valid = df.index[df["split"] == "valid"].to_numpy()
        held = np.random.default_rng(0).choice(valid, size=len(valid) // 2, replace=False)
        df.loc[held, "split"] = "test"
        df.to_csv(csv, index=False)
    return csv


def jobs(out: Path, budget: str) -> dict[str, list[str]]:
    """{run name: clfapp fit arguments}."""
    from small_folders import build
    b = ["--budget", budget]
    runs = {"ic-plants": ["plants", "--data", str(plants_with_held_out_half(out)), *b],
            "ic-idl": ["idl", "--set", "data.test_pct=0.2", *b]}
    for name, folder in build(out / "small").items():
        runs[f"ic-{name}"] = [str(folder), "--set", "data.test_pct=0.3"]
        # the same folders split again: another validation and test draw
        runs[f"ic-{name}-seed1"] = [str(folder), "--set", "data.test_pct=0.3", "--set", "data.seed=1"]
    # CIFAR-10's subset: its test/ folder is the held-out split
    runs["ic-cifar10"] = [str(SHARED / "cifar10_png"), *b]
    return runs


def fit(out: Path, budget: str, only: str | None) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, args in jobs(out, budget).items():
        if only and only not in name:
            continue
        if (Path("runs") / name / "metrics.json").is_file():
            print(f"{name}: already fitted", flush=True)
            continue
        seconds, _ = timed([sys.executable, "-m", "clfapp", "fit", *args, "--name", name], env)
        print(f"{name}: fitted in {seconds:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("fit", "score"))
    ap.add_argument("--out", default="/tmp/clfapp-inference-choice")
    ap.add_argument("--budget", default="8m", help="fit --budget of the plants and idl runs")
    ap.add_argument("--only", help="only the runs whose name contains this")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the shared datasets are needed")
    if args.phase == "fit":
        fit(Path(args.out), args.budget, args.only)
    else:
        score(Path(args.out), args.only)


def score(out: Path, only: str | None) -> None:
    rows = []
    for run in sorted(Path("runs").glob("ic-*")):
        if (only and only not in run.name) or not (run / "model").is_dir():
            continue
        rows.append(score_run(run))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print("\n" + df.to_string(index=False))
    print(f"\nmean gain on the test splits (chosen - formula): {df['gain'].mean():+.4f}; "
          f"worst: {df['gain_images'].min():+.1f} images ({df.loc[df['gain_images'].idxmin(), 'run']})")
    print(f"the plain maximum instead: mean gain {(df['plain_max_gain_images'] / df['n_test']).mean():+.4f}; "
          f"worst: {df['plain_max_gain_images'].min():+.1f} images")


def _truth(items, meta):
    from clfapp import data
    if meta.multi_label:
        return data.label_matrix(items["labels"], meta.classes, meta.label_delim)
    return data.class_indices(items["label"], meta.classes)


def _measure(predictor, items, options, cfg, meta) -> dict:
    """{"valid" | "test": ({candidate: probabilities}, truth)} of the run's bundle."""
    from clfapp.data import images
    from clfapp.infer import choice

    measured = {}
    for part in ("valid", "test"):
        rows = items[items["split"] == part].reset_index(drop=True)
        pixels, kept = {}, None
        for size in sorted({s for s, _ in options}):
            pixels[size], ok = images.read_many(rows["path"].tolist(), size, cfg.data.resize,
                                                progress=False)
            assert kept is None or list(ok) == list(kept), "an image read at one size only"
            kept = ok
        measured[part] = (choice.measured(predictor, pixels, options), _truth(rows.iloc[kept], meta))
    return measured


def _cached(run: Path, options, compute) -> dict:
    """The measured probabilities, kept beside the run (bench-choice.pkl): scoring again with
    another rule costs no forward pass. Recomputed when the weights are newer."""
    import pickle
    cache = run / "bench-choice.pkl"
    weights = run / "model" / "weights.safetensors"
    if cache.is_file() and cache.stat().st_mtime > weights.stat().st_mtime:
        stored = pickle.loads(cache.read_bytes())   # written by this script, beside the run
        if stored["options"] == options:
            return stored["measured"]
    measured = compute()
    cache.write_bytes(pickle.dumps({"options": options, "measured": measured}))
    return measured


def _fit_chose(run: Path) -> str:
    """What the run's own fit shipped (metrics.json `inference`), for runs fitted since fit
    chooses; "" for older runs (the choice above is then this script's alone)."""
    record = json.loads((run / "metrics.json").read_text()).get("inference")
    if not record or "chosen" not in record:
        return ""
    from clfapp.infer import choice
    return choice.said(record["chosen"])


def score_run(run: Path) -> dict:
    """Choose on the run's validation split as fit's last step does (infer/choice.py), then
    score the chosen and the formula's configuration on its test split, which neither the
    best epoch nor the choice saw."""
    from clfapp import config
    from clfapp.data import splits
    from clfapp.infer import choice, metrics
    from clfapp.infer.predict import Predictor
    from clfapp.infer.spec import tta_flips_for, tta_views
    from clfapp.infer.test_size import auto_test_size

    cfg = config.from_file(run / "config.toml")
    predictor = Predictor(run)
    meta = predictor.meta
    flips = tta_flips_for(cfg.aug)
    formula_size = cfg.data.test_size or auto_test_size(cfg.data.size, cfg.aug)
    options = choice.candidates(cfg.data.size, formula_size, bool(cfg.data.test_size),
                                cfg.aug.tta, flips)
    views = {(s, t): len(tta_views(flips)) if t else 1 for s, t in options}
    formula = (formula_size, bool(cfg.aug.tta and flips))
    items = splits.read(run / "splits.csv")
    measured = _cached(run, options, lambda: _measure(predictor, items, options, cfg, meta))
    probs, y = measured["valid"]
    picked = choice.choose(probs, y, meta.multi_label, views, formula, cfg.thresholds.metric,
                           cfg.thresholds.mode, meta.classes)
    rec = {(r["size"], r["tta"]): r for r in picked.record["candidates"]}
    chosen = (picked.size, picked.tta)
    test_probs, test_y = measured["test"]
    n = len(test_y)

    def on_test(key):
        p = test_probs[key]
        if meta.multi_label:   # at the thresholds searched for that candidate on validation
            return metrics.multi_label(p, test_y, meta.classes, rec[key]["thresholds"])[cfg.thresholds.metric]
        return float((p.argmax(axis=1) == test_y).mean())

    name = cfg.thresholds.metric if meta.multi_label else "accuracy"
    c, f = on_test(chosen), on_test(formula)
    # what the plain maximum on validation (no confidence test) would have shipped
    tie = "map" if meta.multi_label else "log_loss"
    plain = max(rec, key=lambda k: (round(rec[k][name], 4),
                                    round(rec[k][tie] if tie == "map" else -rec[k][tie], 4),
                                    -rec[k]["views"], -rec[k]["size"]))
    m = on_test(plain)
    # one image's worth of the figure: 1/n for accuracy; for micro-F1 an image's share of
    # the label decisions, about 1/n too (each image carries a similar number of labels)
    return {"run": run.name, "metric": name, "n_valid": len(y), "n_test": n,
            "chosen": choice.said(rec[chosen]), "formula": choice.said(rec[formula]),
            "valid_chosen": round(rec[chosen][name], 4), "valid_formula": round(rec[formula][name], 4),
            "test_chosen": round(c, 4), "test_formula": round(f, 4),
            "gain": round(c - f, 4), "gain_images": round((c - f) * n, 1),
            "fit_chose": _fit_chose(run),
            "plain_max": choice.said(rec[plain]), "test_plain_max": round(m, 4),
            "plain_max_gain_images": round((m - f) * n, 1),
            "p_better": {choice.said(r): r.get("p_better") for r in picked.record["candidates"]}}


if __name__ == "__main__":
    main()
