"""50,000 images: build the image cache, fit one epoch, predict over them; peak memory of each.

    python bench/scale_make.py            # first: the generated images under /tmp/clfapp_scale
    python bench/scale_fit.py [--data /tmp/clfapp_scale/small/fit50k.csv] [--size 32]

Each step is the real CLI in its own process, measured by bench/scale_common.py (peak RSS of
the whole process tree, polled, and GNU time's figure). The cache goes to a fresh folder
(CLFAPP_CACHE) so the first step really builds it. The model is the digits recipe's: resnet10t
from scratch at 32 px, one epoch, batch 64.
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

from scale_common import CLFAPP, Measured, machine_note, run, say, table

RECIPE = """# scale bench: digits-like settings on generated plant images
[data]
path = "{data}"
size = {size}

[aug]
flip = true
max_rotate = 10.0

[model]
arch = "resnet10t"
pretrained = false

[train]
epochs = 1
freeze_epochs = 0
lr = 1e-2
bs = 64
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/clfapp_scale/small/fit50k.csv")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="predict --workers")
    a = ap.parse_args()
    data = Path(a.data)
    n = sum(1 for _ in open(data)) - 1
    work = Path(tempfile.mkdtemp(prefix="clfapp_scale_fit_"))
    cache = work / "cache"
    recipe = work / "scale.toml"
    recipe.write_text(RECIPE.format(data=data, size=a.size))
    env = {"CLFAPP_CACHE": str(cache)}
    say(f"{n} images listed in {data}; work folder {work}; {machine_note()}")
    steps: list[tuple[str, Measured, str]] = []

    m = run([CLFAPP, "data", "prepare", str(recipe)], work / "prepare.log", env, cwd=work)
    steps.append(("data prepare (decode into the cache)", m, _grep(m.output, r"image cache built: .*")))
    m = run([CLFAPP, "fit", str(recipe), "--name", "scale"], work / "fit.log", env, cwd=work)
    epoch = _grep(m.output, r"^0\s+\S+\s+\S+\s+\S+.*$")
    steps.append(("fit, 1 epoch (reads the cache)", m, "epoch row: " + " ".join(epoch.split())))
    m = run([CLFAPP, "predict", "runs/scale", str(data), "--workers", str(a.workers)],
            work / "predict.log", env, cwd=work)
    steps.append((f"predict {n} (--workers {a.workers})", m, _grep(m.output, r"predictions written.*")))

    rows = [{"step": s, "exit": m.rc, "seconds": f"{m.seconds:.0f}",
             "peak RSS, tree (MB)": f"{m.peak_rss_mb:.0f}", "peak anon, tree (MB)": f"{m.peak_anon_mb:.0f}",
             "GNU time max RSS (MB)": f"{m.time_v_mb:.0f}", "note": note} for s, m, note in steps]
    say("\n" + table(rows))
    worst = max(m.peak_rss_mb for _, m, _ in steps)
    say(f"\nhighest peak RSS of any step: {worst:.0f} MB ({'under' if worst < 3072 else 'OVER'} 3 GB); "
        f"cache on disk: {sum(f.stat().st_size for f in cache.rglob('*')) / 2**20:.0f} MiB; "
        f"logs in {work}; {machine_note()}")
    shutil.rmtree(cache, ignore_errors=True)


def _grep(text: str, pattern: str) -> str:
    m = re.search(pattern, text, re.M)
    return m.group(0).strip() if m else "(not found)"


if __name__ == "__main__":
    main()
