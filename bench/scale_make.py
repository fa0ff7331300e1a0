"""Generated data for the scale benches (bench/scale_*.py), written under /tmp, never committed.

    python bench/scale_make.py --small 100000 --big 300 [--out /tmp/clfapp_scale]

* OUT/small/CLASS/NNNNNN.jpg: resized (40-96 px) and rotated copies of the plant seedlings
  images (../shared/datasets/plant_seedlings, 12 species = 12 classes), JPEG q=85;
  OUT/small/fit50k.csv lists the first --fit of them (fname,label) for `fit`.
* OUT/big/CLASS/NNNN.jpg: --big upscaled copies at 3000 x 3000 px (multi-megapixel JPEGs, q=90).
Deterministic (seeded); files already there are kept, so a second call is quick.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "plant_seedlings"


def sources() -> list[tuple[str, str]]:
    found = sorted((str(p), p.parent.name) for p in SOURCE.rglob("*.jpg"))
    if not found:
        sys.exit(f"no source images in {SOURCE}")
    return found


def _make(args) -> int:
    kind, start, stop, out, seed = args
    src = sources()
    rng = np.random.default_rng(seed + start)
    made = 0
    for i in range(start, stop):
        path, label = src[i % len(src)]
        target = Path(out) / label / f"{i:06d}.jpg"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(path).convert("RGB")
        if kind == "small":
            side = int(rng.integers(40, 97))
            img = img.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)
            img.resize((side, side), Image.Resampling.BILINEAR).save(target, quality=85)
        else:
            img = img.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)
            img = img.resize((3000, 3000), Image.Resampling.BICUBIC)
            noise = rng.integers(-12, 13, (3000, 3000, 3), dtype=np.int16)  # not flat: real JPEG work
            arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(target, quality=90)
        made += 1
    return made


def make(kind: str, n: int, out: Path, procs: int) -> float:
    t0 = time.perf_counter()
    step = 500 if kind == "small" else 10
    jobs = [(kind, s, min(s + step, n), str(out), 7) for s in range(0, n, step)]
    with ProcessPoolExecutor(procs) as pool:
        made = sum(pool.map(_make, jobs))
    dt = time.perf_counter() - t0
    print(f"{kind}: {made} made, {n - made} already there, in {out} ({dt:.0f} s)", flush=True)
    return dt


def fit_csv(out: Path, n: int) -> Path:
    files = sorted(out.rglob("*.jpg"), key=lambda p: p.name)[:n]
    csv = out / f"fit{n // 1000}k.csv"
    with open(csv, "w") as f:
        f.write("fname,label\n")
        for p in files:
            f.write(f"{p.relative_to(out)},{p.parent.name}\n")
    return csv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/clfapp_scale")
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--fit", type=int, default=50_000)
    ap.add_argument("--big", type=int, default=300)
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    out = Path(a.out)
    if a.small:
        make("small", a.small, out / "small", a.procs)
        print(f"fit list: {fit_csv(out / 'small', min(a.fit, a.small))}")
    if a.big:
        make("big", a.big, out / "big", a.procs)


if __name__ == "__main__":
    main()
