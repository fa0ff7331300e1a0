"""clfapp against a plain fastai multi-label script on the idl photos (14 labels).

    python bench/idl_vs_fastai.py [--data ../shared/datasets/idl_multilabel] [--only clfapp]

Both use the same iterative split, model, size, epochs and LR (see plain_fastai_idl.py).
Prints micro-F1 at threshold 0.5 and after a global threshold search, wall seconds, and the
clfapp / fastai ratios.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from runner import timed

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="../shared/datasets/idl_multilabel")
    ap.add_argument("--only", choices=("fastai", "clfapp"))
    args = ap.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"{args.data} not found: the idl_multilabel dataset is needed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = {}
    if args.only != "clfapp":
        s, out = timed([sys.executable, str(HERE / "plain_fastai_idl.py"), args.data], env)
        r = json.loads(out.strip().splitlines()[-1])
        rows["plain fastai"] = (r["f1_micro_at_0.5"], r["f1_micro_tuned"], s)
        print(f"plain fastai: {rows['plain fastai']}", flush=True)
    if args.only != "fastai":
        name = f"bench-idl-{int(time.time())}"
        s, _ = timed([sys.executable, "-m", "clfapp", "fit", "idl", "--data", args.data,
                      "--name", name], env)
        m = json.loads((Path("runs") / name / "metrics.json").read_text())
        rows["clfapp"] = (round(m["at_0_5"]["f1_micro"], 4), round(m["f1_micro"], 4), s)
        print(f"clfapp: {rows['clfapp']}", flush=True)
    print(f"\n{'':14s} {'F1@0.5':>8s} {'F1 tuned':>9s} {'seconds':>8s}")
    for k, (a, b, s) in rows.items():
        print(f"{k:14s} {a:8.4f} {b:9.4f} {s:8.1f}")
    if len(rows) == 2:
        (a1, b1, s1), (a2, b2, s2) = rows["plain fastai"], rows["clfapp"]
        print(f"{'clfapp/fastai':14s} {a2 / a1:8.3f} {b2 / b1:9.3f} {s2 / s1:8.3f}")


if __name__ == "__main__":
    main()
