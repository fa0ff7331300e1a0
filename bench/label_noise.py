"""Label issues found by `clfapp data issues` on labels flipped or altered on purpose.

    python bench/label_noise.py --flip 0.05                    # plants: detection
    python bench/label_noise.py --flip 0.20 --cleaned          # plants: clean vs noisy vs cleaned fits
    python bench/label_noise.py --multi                        # digits-multi: 5 % of label sets altered
    options: --folds 5 --budget 30m --seed 0 --out /tmp/clfapp-label-noise
             --per-class N (plants: a subset, N training images a class; for a smoke run)
             --fit-budget 10m --fix both|drop|relabel (--cleaned)
             --set KEY=VALUE (repeatable; every clfapp fit here, e.g. data.size=64 for a smoke run)

Everything is built under --out (never in the repo; the images are hard links, or copies, of
../shared/datasets/plant_seedlings, so a cleaned CSV's paths stay inside its folder), and
clfapp runs there (its runs/ folder too).

--flip F: a label CSV over plants' train/ (split train) and valid/ (split valid, never
flipped) in which a seeded fraction F of the TRAINING labels is flipped to another class at
random; the flip list is kept aside (OUT/flips-F.csv: fname, true, flipped). Then
`clfapp data issues NOISY.csv --folds K --budget B` (the k-fold fit inside) and the figures:
the share of flipped images flagged as label issues (target >= 0.80 at 5 %), the precision of
the N most suspicious label issues with N = the number flipped (target >= 0.70), wall seconds.

--cleaned: `--write-clean --fix relabel` (and, reusing the same k-fold run, `--fix drop`),
then `clfapp fit CSV --budget FIT_BUDGET` on the clean, the noisy and each cleaned CSV (the
same settings), and their validation accuracy (metrics.json: valid/, never flipped) with the
share of the noise's cost recovered, (cleaned - noisy) / (clean - noisy) (target >= 0.50).

--multi: `clfapp data sample digits-multi`, 5 % of its label sets altered (seeded: one label
added that the image does not show, or one it shows removed; list in OUT/altered.csv), then
`data issues` as above: the share of altered images flagged (target >= 0.70) and of those
flagged, the share whose issues.csv row names the altered label (given minus suggested holds
an added label, suggested minus given a removed one), and named alone (no other label).
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import timed  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PLANTS = SHARED / "plant_seedlings"


def _key(p) -> str:
    return os.path.normpath(os.path.abspath(str(p)))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def clfapp(args: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    app = str(Path(__file__).resolve().parents[1] / "app")
    env["PYTHONPATH"] = app + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "clfapp", *args]
    print("$ clfapp " + " ".join(args), flush=True)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return timed(cmd, env)
    finally:
        os.chdir(old)


# ---- data -------------------------------------------------------------------------------

def plants_csvs(out: Path, flip: float, seed: int, per_class: int | None) -> tuple[Path, Path, pd.DataFrame]:
    """(clean CSV, noisy CSV, flips) over OUT/data/plants (hard links of the shared images)."""
    data = out / "data"
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "valid"):
        n = per_class if split == "train" else (max(3, per_class // 4) if per_class else None)
        for cls in sorted(d.name for d in (PLANTS / split).iterdir() if d.is_dir()):
            files = sorted((PLANTS / split / cls).iterdir())
            if n:
                files = sorted(rng.choice(files, min(n, len(files)), replace=False))
            for f in files:
                fname = f"plants/{split}/{cls}/{f.name}"
                _link(f, data / fname)
                rows.append((fname, cls, split))
    clean = pd.DataFrame(rows, columns=["fname", "label", "split"])
    classes = sorted(clean["label"].unique())
    train = np.flatnonzero(clean["split"].to_numpy() == "train")
    n_flip = int(round(flip * len(train)))
    chosen = np.sort(rng.choice(train, n_flip, replace=False))
    noisy = clean.copy()
    flipped = [str(rng.choice([c for c in classes if c != clean.at[i, "label"]])) for i in chosen]
    noisy.loc[chosen, "label"] = flipped
    flips = pd.DataFrame({"fname": clean.loc[chosen, "fname"].to_numpy(),
                          "true": clean.loc[chosen, "label"].to_numpy(), "flipped": flipped})
    tag = f"{flip:g}" + (f"-pc{per_class}" if per_class else "")
    clean_csv, noisy_csv = data / f"clean{'-pc' + str(per_class) if per_class else ''}.csv", data / f"noisy-{tag}.csv"
    clean.to_csv(clean_csv, index=False)
    noisy.to_csv(noisy_csv, index=False)
    flips.to_csv(out / f"flips-{tag}.csv", index=False)
    print(f"{len(clean)} images ({len(train)} train, {len(clean) - len(train)} valid), "
          f"{len(classes)} classes; {n_flip} training labels flipped (list: {out / f'flips-{tag}.csv'})")
    return clean_csv, noisy_csv, flips


def digits_multi_csv(out: Path, share: float, seed: int) -> tuple[Path, pd.DataFrame]:
    """(altered CSV, alterations: fname, given, altered, change, label) over digits-multi."""
    data = out / "digits-multi"
    if not (data / "labels.csv").is_file():
        if data.exists():
            shutil.rmtree(data)
        clfapp(["data", "sample", "digits-multi", "--out", str(data)], out)
    df = pd.read_csv(data / "labels.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(df), int(round(share * len(df))), replace=False))
    altered = df.copy()
    rows = []
    for i in chosen:
        shown = df.at[i, "labels"].split()
        if shown and rng.random() < 0.5:
            label = str(rng.choice(shown))
            new, change = [s for s in shown if s != label], "removed"
        else:
            label = str(rng.choice([str(d) for d in range(10) if str(d) not in shown]))
            new, change = sorted(shown + [label]), "added"
        altered.at[i, "labels"] = " ".join(new)
        rows.append((df.at[i, "fname"], df.at[i, "labels"], " ".join(new), change, label))
    csv = data / "labels-altered.csv"
    altered.to_csv(csv, index=False)
    alts = pd.DataFrame(rows, columns=["fname", "given", "altered", "change", "label"])
    alts.to_csv(out / "altered.csv", index=False)
    print(f"{len(df)} images; {len(alts)} label sets altered ({(alts.change == 'added').sum()} added, "
          f"{(alts.change == 'removed').sum()} removed; list: {out / 'altered.csv'})")
    return csv, alts


# ---- clfapp steps ------------------------------------------------------------------------

def _budget(budget: str) -> list[str]:
    return [] if budget == "none" else ["--budget", budget]


def _sets(args) -> list[str]:
    return [a for kv in args.sets for a in ("--set", kv)]


def data_issues(csv: Path, out: Path, name: str, args, extra: list[str]) -> tuple[pd.DataFrame, Path, float]:
    """(label rows of issues.csv, the k-fold run it fitted, wall seconds)."""
    runs = out / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    issues = out / name
    if issues.exists():
        shutil.rmtree(issues)
    seconds, said = clfapp(["data", "issues", str(csv), "--folds", str(args.folds), *_budget(args.budget),
                            "--out", str(issues), *extra, *_sets(args)], out)
    _cleaned_line(said)
    new = sorted(p for p in set(runs.iterdir()) - before if (p / "oof.csv").is_file())
    table = pd.read_csv(issues / "issues.csv", dtype=str, keep_default_na=False)
    return table[table["kind"] == "label"].reset_index(drop=True), new[-1], seconds


def _cleaned_line(said: str) -> None:
    """data issues' line on the cleaned CSV (how many images dropped, relabelled, and why)."""
    for line in said.splitlines():
        if line.startswith("wrote") and "dropped" in line:
            print("  " + line, flush=True)


def same_validation(cleaned: Path, clean: Path) -> Path:
    """The cleaned CSV's training rows with the clean CSV's validation rows (FILE-fit.csv):
    data issues also flags, drops or relabels validation images, and the three fits must be
    measured on the same, never flipped, valid/."""
    df = pd.read_csv(cleaned, dtype=str, keep_default_na=False)
    ref = pd.read_csv(clean, dtype=str, keep_default_na=False)
    prefix = Path(os.path.relpath(clean.parent, cleaned.parent)).as_posix()
    ref["fname"] = prefix + "/" + ref["fname"]
    valid = ref[ref["split"] == "valid"]
    mine = df[df["split"] == "valid"]
    changed = len(set(valid["fname"]) - set(mine["fname"])) + int(
        (mine.merge(valid, on="fname", suffixes=("", "_ref")).eval("label != label_ref")).sum())
    out = cleaned.with_name(cleaned.stem + "-fit.csv")
    pd.concat([df[df["split"] != "valid"], valid], ignore_index=True).to_csv(out, index=False)
    print(f"  {cleaned.name}: {changed} of {len(valid)} validation image(s) dropped or relabelled "
          f"by the cleaning, put back as they were for the fit ({out.name})", flush=True)
    return out


def fit_accuracy(csv: Path, out: Path, name: str, args) -> tuple[float, float]:
    run = out / "runs" / name
    if run.exists():
        shutil.rmtree(run)
    seconds, _ = clfapp(["fit", str(csv), *_budget(args.fit_budget), "--name", name, *_sets(args)], out)
    return float(json.loads((run / "metrics.json").read_text())["accuracy"]), seconds


# ---- benches -----------------------------------------------------------------------------

def detection(labels: pd.DataFrame, planted: set, n: int) -> tuple[int, int]:
    """(planted images flagged, planted among the n most suspicious label issues)."""
    flagged = labels["path"].map(_key)
    return int(flagged.isin(planted).sum()), int(flagged.head(n).isin(planted).sum())


def bench_flip(args, out: Path) -> None:
    clean_csv, noisy_csv, flips = plants_csvs(out, args.flip, args.seed, args.per_class)
    data = clean_csv.parent
    planted = {_key(data / f) for f in flips["fname"]}
    tag = f"{args.flip:g}-s{args.seed}" + (f"-pc{args.per_class}" if args.per_class else "")
    relabel_csv = out / f"cleaned-relabel-{tag}.csv"
    extra = ["--write-clean", str(relabel_csv), "--fix", "relabel"] if args.cleaned and args.fix != "drop" else []
    if args.cleaned and args.fix == "drop":
        extra = ["--write-clean", str(out / f"cleaned-drop-{tag}.csv"), "--fix", "drop"]
    for f in (relabel_csv, out / f"cleaned-drop-{tag}.csv"):
        f.unlink(missing_ok=True)
    labels, run, seconds = data_issues(noisy_csv, out, f"issues-{tag}", args, extra)
    n = len(flips)
    hit, top = detection(labels, planted, n)
    top_train = detection(labels[labels["split"] == "train"], planted, n)[1]
    rows = [("flipped flagged", f"{hit}/{n}", hit / max(n, 1), ">= 0.80"),
            (f"flipped in top {n} label issues", f"{top}/{n}", top / max(n, 1), ">= 0.70"),
            ("  same, training images only", f"{top_train}/{n}", top_train / max(n, 1), "(valid/ never flipped)")]
    print(f"\nplants, {args.flip:.0%} of training labels flipped ({n}); data issues --folds "
          f"{args.folds} --budget {args.budget}: {len(labels)} label issue(s), {seconds:.0f} s wall "
          f"(k-fold run {run})")
    print(f"{'figure':<36}{'count':>10}{'share':>8}  target")
    for what, count, share, target in rows:
        print(f"{what:<36}{count:>10}{share:>8.2f}  {target}")
    if not args.cleaned:
        return
    cleaned = {}
    if args.fix != "drop":
        cleaned["relabel"] = relabel_csv
    else:
        cleaned["drop"] = out / f"cleaned-drop-{tag}.csv"
    if args.fix == "both":   # the same k-fold run: only near-duplicates and outliers are redone
        drop_csv = out / f"cleaned-drop-{tag}.csv"
        issues = out / f"issues-{tag}-drop"
        if issues.exists():
            shutil.rmtree(issues)
        _cleaned_line(clfapp(["data", "issues", str(noisy_csv), "--run", str(run), "--out", str(issues),
                              "--write-clean", str(drop_csv), "--fix", "drop", *_sets(args)], out)[1])
        cleaned["drop"] = drop_csv
    cleaned = {k: same_validation(v, clean_csv) for k, v in cleaned.items()}
    fits = [("clean", clean_csv), ("noisy", noisy_csv)] + [(f"cleaned ({k})", v) for k, v in cleaned.items()]
    acc = {}
    for what, csv in fits:
        acc[what] = fit_accuracy(csv, out, f"fit-{tag}-{what.split()[-1].strip('()')}", args)
        print(f"  {what}: accuracy {acc[what][0]:.4f} ({acc[what][1]:.0f} s)", flush=True)
    cost = acc["clean"][0] - acc["noisy"][0]
    print(f"\nfit CSV --budget {args.fit_budget} on each (validation: valid/, never flipped)")
    print(f"{'labels':<20}{'images':>8}{'accuracy':>10}{'recovered':>11}{'seconds':>9}")
    for what, csv in fits:
        images = len(pd.read_csv(csv))
        rec = ("" if not what.startswith("cleaned") else
               f"{(acc[what][0] - acc['noisy'][0]) / cost:.2f}" if cost > 0 else "n/a")
        print(f"{what:<20}{images:>8}{acc[what][0]:>10.4f}{rec:>11}{acc[what][1]:>9.0f}")
    print("recovered = (cleaned - noisy) / (clean - noisy); target >= 0.50"
          + ("" if cost > 0 else f"; the noise cost nothing here ({cost:+.4f})"))


def bench_multi(args, out: Path) -> None:
    csv, alts = digits_multi_csv(out, args.alter, args.seed)
    root = csv.parent / "images"
    tag = f"multi-s{args.seed}"
    labels, run, seconds = data_issues(csv, out, f"issues-{tag}", args, [])
    by_path = {_key(root / f): r for r, f in zip(alts.itertuples(), alts["fname"])}
    n = len(alts)
    flagged = named = alone = 0
    for row in labels.itertuples():
        alt = by_path.get(_key(row.path))
        if alt is None:
            continue
        flagged += 1
        given, suggested = set(row.given.split()), set(row.suggested.split())
        suspects = (given - suggested) | (suggested - given)
        right = alt.label in (given - suggested if alt.change == "added" else suggested - given)
        named += right
        alone += right and suspects == {alt.label}
    top = int(labels["path"].map(_key).head(n).isin(set(by_path)).sum())
    print(f"\ndigits-multi, {n} label sets altered; data issues --folds {args.folds} --budget "
          f"{args.budget}: {len(labels)} label issue(s), {seconds:.0f} s wall (k-fold run {run})")
    print(f"{'figure':<40}{'count':>10}{'share':>8}  target")
    for what, count, of, target in (("altered flagged", flagged, n, ">= 0.70"),
                                    (f"altered in top {n} label issues", top, n, ""),
                                    ("flagged with the altered label named", named, flagged, "(named)"),
                                    ("  ... and no other label named", alone, flagged, "")):
        print(f"{what:<40}{f'{count}/{of}':>10}{count / max(of, 1):>8.2f}  {target}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--flip", type=float, help="plants: the share of training labels flipped")
    what.add_argument("--multi", action="store_true", help="digits-multi: label sets altered")
    ap.add_argument("--cleaned", action="store_true", help="with --flip: fit clean, noisy and cleaned CSVs")
    ap.add_argument("--fix", choices=("both", "drop", "relabel"), default="both")
    ap.add_argument("--alter", type=float, default=0.05, help="with --multi: the share of label sets altered")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--budget", default="30m", help="data issues' k-fold fit, all folds ('none': no budget)")
    ap.add_argument("--fit-budget", default="10m", help="with --cleaned: each of the compared fits ('none')")
    ap.add_argument("--set", action="append", default=[], dest="sets",
                    help="a config value for data issues' k-fold fit and the compared fits, "
                         "e.g. train.epochs=1 (repeatable)")
    ap.add_argument("--per-class", type=int, help="plants: only N training images a class (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/clfapp-label-noise")
    args = ap.parse_args()
    if args.cleaned and args.flip is None:
        ap.error("--cleaned goes with --flip")
    if args.flip is not None and not 0 < args.flip < 1:
        ap.error("--flip is a share between 0 and 1")
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.multi:
        bench_multi(args, out)
    else:
        if not PLANTS.is_dir():
            sys.exit(f"{PLANTS} not found: this bench needs the shared datasets")
        bench_flip(args, out)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
