"""Outliers: 30 CIFAR-10 images planted among the plant seedlings' training images.

    python bench/outliers.py [--planted 30] [--top 60] [--work /tmp/clfapp-bench-dups]

The planted images (3 per CIFAR-10 class from test/, seeded) are given a random plant class as
their label, as if misfiled; nothing is copied: the bench works on paths. Each method of
clfapp.infer.outliers scores all images; the figure is the share of planted images among the
`--top` highest scores (and, stricter, how many are among as many top scores as were planted). Features (tf_efficientnet_lite0) are cached under --work, shared with
bench/near_duplicates.py.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from near_duplicates import DATASETS, cached_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--planted", type=int, default=30)
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--work", default="/tmp/clfapp-bench-dups")
    args = ap.parse_args()
    if not DATASETS.is_dir():
        sys.exit(f"{DATASETS} not found: this bench needs the shared datasets")
    from clfapp.infer import outliers
    from clfapp.infer.features import FEATURE_SIZE
    from clfapp.report.progress import plain_lines_off_terminal

    plain_lines_off_terminal()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train = DATASETS / "plant_seedlings" / "train"
    plants = sorted(str(p) for p in train.glob("*/*"))
    labels = [Path(p).parent.name for p in plants]
    classes = sorted(set(labels))
    cifar_classes = sorted(d for d in (DATASETS / "cifar10_png" / "test").iterdir() if d.is_dir())
    per = max(1, args.planted // len(cifar_classes))
    planted = []
    for d in cifar_classes:
        planted += [str(p) for p in rng.choice(sorted(d.glob("*")), per, replace=False)]
    planted = planted[:args.planted]
    paths = plants + planted
    labels = labels + list(rng.choice(classes, len(planted)))
    x, t_feat = cached_features(paths, work, FEATURE_SIZE)
    print(f"{len(plants)} plant seedlings (train/) + {len(planted)} planted CIFAR-10 images; "
          f"features {FEATURE_SIZE} px: {t_feat:.0f} s" + (" (cached)" if not t_feat else ""))
    n = len(planted)
    print(f"\n{'method':<22}{f'planted in top {args.top}':>18}{'hit rate':>10}{f'in top {n}':>10}"
          f"{'median rank':>13}{'seconds':>9}")
    is_planted = np.array([p in set(planted) for p in paths])
    runs = [("knn", k) for k in (1, 5, 10, 20)] + [("centroid", 0)]
    for method, k in runs:
        t0 = time.perf_counter()
        s = outliers.score(x, labels, method=method, k=k or outliers.K)
        secs = time.perf_counter() - t0
        order = np.argsort(-s, kind="stable")
        ranks = np.empty(len(s), int)
        ranks[order] = np.arange(1, len(s) + 1)
        hits = int(is_planted[order[:args.top]].sum())
        name = f"{method} k={k}" if k else method
        mark = "  <- default" if method == outliers.METHOD and (not k or k == outliers.K) else ""
        print(f"{name:<22}{f'{hits}/{len(planted)}':>18}{hits / len(planted):>10.2f}"
              f"{int(is_planted[order[:n]].sum()):>10}"
              f"{int(np.median(ranks[is_planted])):>13}{secs:>9.2f}{mark}")


if __name__ == "__main__":
    main()
