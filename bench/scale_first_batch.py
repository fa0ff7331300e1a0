"""Multi-megapixel JPEGs: threads vs processes building the cache, and the time a fit takes to
reach its first batch with the cache cold, then warm.

    python bench/scale_make.py --small 0 --big 300     # first: 3000 x 3000 px JPEGs under /tmp
    python bench/scale_first_batch.py [--data /tmp/clfapp_scale/big] [--size 64]

Pools: `cache.build` of the same files into a fresh cache with each pool (2 workers), and the
same on --small-data (the 40-96 px images), best of --repeat. Fits: `clfapp fit` (resnet10t from
scratch, 1 epoch) twice in fresh processes, the first with an empty cache (CLFAPP_CACHE in a new
folder: data.cache = auto builds it, these files being large), the second with it warm; a
callback prints the time of the first training batch, from the process's start and from the
fit's start (after imports).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale_common import PYTHON, machine_note, say, table

FIRST_BATCH = r"""
import sys, time
T0 = time.perf_counter()
from fastai.callback.core import Callback
import clfapp.train as tr

class FirstBatch(Callback):
    order = -100
    def before_batch(self):
        if not getattr(self, "seen", False):
            self.seen = True
            t = time.perf_counter()
            print(f"FIRST_BATCH process {t - T0:.2f} fit {t - T_FIT[0]:.2f}", flush=True)

T_FIT = [0.0]
real_prepare = tr.prepare
def prepare(*a, **k):
    T_FIT[0] = time.perf_counter()   # prepare: weights, data, model; imports are done by now
    p = real_prepare(*a, **k)
    p.learn.add_cb(FirstBatch())
    return p
tr.prepare = prepare
from clfapp.cli.main import app
sys.argv = ["clfapp", *sys.argv[1:]]
app()
"""

RECIPE = """[data]
path = "{data}"
size = {size}
[model]
arch = "resnet10t"
pretrained = false
[train]
epochs = 1
freeze_epochs = 0
lr = 1e-2
bs = 32
"""


def pools(data: Path, size: int, repeat: int, work: Path) -> list[dict]:
    code = f"""
import os, shutil, sys, time
from clfapp.data import cache, images
paths = [str(p) for p in images.find_images({str(data)!r})]
best = {{}}
for r in range({repeat}):
    for kind in ("thread", "process"):
        d = {str(work)!r} + "/pool-" + kind
        shutil.rmtree(d, ignore_errors=True)
        os.environ["CLFAPP_CACHE"] = d
        t = time.perf_counter()
        cache.build(paths, {size}, "squish", workers=2, kind=kind, progress=False)
        best[kind] = min(best.get(kind, 1e9), time.perf_counter() - t)
for kind, s in best.items():
    print("POOL", kind, len(paths), f"{{s:.2f}}")
"""
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True)
    rows = []
    for kind, n, s in re.findall(r"POOL (\w+) (\d+) ([\d.]+)", out.stdout):
        rows.append({"images": f"{n} from {data.name}", "size": size, "pool": kind,
                     "seconds (best of %d)" % repeat: s, "images/s": f"{int(n) / float(s):.0f}"})
    if not rows:
        say(out.stderr[-2000:])
    return rows


def fit(recipe: Path, cache: Path, work: Path, name: str) -> tuple[float, float, float, str]:
    env = dict(__import__("os").environ, CLFAPP_CACHE=str(cache), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    out = subprocess.run([PYTHON, "-c", FIRST_BATCH, "fit", str(recipe), "--name", name],
                         capture_output=True, text=True, env=env, cwd=work)
    total = time.perf_counter() - t0
    m = re.search(r"FIRST_BATCH process ([\d.]+) fit ([\d.]+)", out.stdout)
    if not m or out.returncode:
        say(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"fit {name} failed")
    line = re.search(r"^image cache: .*$", out.stdout, re.M)
    return float(m.group(1)), float(m.group(2)), total, line.group(0) if line else "(no cache line)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/clfapp_scale/big")
    ap.add_argument("--small-data", default="/tmp/clfapp_scale/small/Charlock")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-pools", action="store_true", help="only the two fits")
    a = ap.parse_args()
    data = Path(a.data)
    work = Path(tempfile.mkdtemp(prefix="clfapp_first_batch_"))
    say(f"work folder {work}; {machine_note()}")
    if not a.no_pools:
        rows = pools(data, a.size, a.repeat, work)
        if a.small_data and Path(a.small_data).is_dir():
            rows += pools(Path(a.small_data), 32, a.repeat, work)
        say("\n" + table(rows) + "\n")

    recipe = work / "big.toml"
    recipe.write_text(RECIPE.format(data=data, size=a.size))
    cache = work / "cache"
    cold = fit(recipe, cache, work, "cold")
    warm = fit(recipe, cache, work, "warm")
    rows = [{"fit": what, "first batch from process start (s)": f"{r[0]:.1f}",
             "first batch from fit start (s)": f"{r[1]:.1f}", "whole command (s)": f"{r[2]:.0f}",
             "cache": r[3][:90]} for what, r in (("cold cache", cold), ("warm cache", warm))]
    say(table(rows))
    say(f"\nwarm vs cold, first batch: {cold[0] / warm[0]:.1f}x sooner from process start, "
        f"{cold[1] / warm[1]:.1f}x from fit start; {machine_note()}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
