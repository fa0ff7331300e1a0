"""clfapp against a plain fastai multi-label script on the idl photos (14 labels).

    python bench/idl_vs_fastai.py [--data ../shared/datasets/idl_multilabel] [--only clfapp]

Both use the same iterative split, model, size, epochs and LR (see plain_fastai_idl.py).
Prints, for the last epoch of each (last vs last), micro-F1 at threshold 0.5 and after a
global threshold search, then the best epoch's micro-F1 at 0.5 (best vs best, as recorded per
epoch), wall seconds, and the clfapp / fastai ratios. clfapp's run keeps its best epoch; its
last-epoch tuned figure is not recorded, so the tuned column compares clfapp's kept (best)
model with the plain script's last one, as each tool ends.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from runner import last_and_best, print_table, timed

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
        rows["plain fastai"] = (r["f1_micro_at_0.5"], r["f1_micro_best_epoch_at_0.5"],
                                r["f1_micro_tuned"], s)
        print(f"plain fastai: {rows['plain fastai']}", flush=True)
    if args.only != "fastai":
        name = f"bench-idl-{int(time.time())}"
        s, _ = timed([sys.executable, "-m", "clfapp", "fit", str(HERE / "recipes" / "idl-baseline.toml"),
                      "--data", args.data,
                      "--name", name], env)
        m = json.loads((Path("runs") / name / "metrics.json").read_text())
        last, best = last_and_best(Path("runs") / name, "f1_micro")
        rows["clfapp"] = (last, best, round(m["f1_micro"], 4), s)
        print(f"clfapp: {rows['clfapp']}", flush=True)
    print_table(rows, ("F1@.5 last", "F1@.5 best", "F1 tuned"))


if __name__ == "__main__":
    main()
