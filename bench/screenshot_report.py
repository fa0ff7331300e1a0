"""Render a report.html in headless Chromium to PNG, to look at a report without a browser.

    python bench/screenshot_report.py runs/plants-1/report.html [--out shot.png] [--width 1280]
        [--height 9000] [--tile 1800]

Writes OUT (default: report.png beside the HTML) of the page's first HEIGHT pixels, and with
--tile N also OUT-1.png, OUT-2.png, ... slices N pixels tall (easier to view one at a time).
Needs a Chromium binary (`apt-get install chromium`, or set CHROMIUM=/path/to/it). The page
is self-contained, so Chromium runs with networking refused (a page that still fetches
something shows it as missing).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    sys.exit("no chromium found: apt-get install chromium, or set CHROMIUM=/path/to/chromium")


def shoot(html: Path, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",  # no network
               f"--window-size={width},{height}", f"--screenshot={out}",
               html.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr.strip()[-400:]}")


def crop_blank_bottom(out: Path) -> None:
    """Cut the empty page background below the footer."""
    from PIL import Image, ImageChops
    img = Image.open(out).convert("RGB")
    bg = Image.new("RGB", img.size, img.getpixel((img.width // 2, img.height - 1)))
    box = ImageChops.difference(img, bg).getbbox()
    if box:
        img.crop((0, 0, img.width, min(img.height, box[3] + 20))).save(out)


def tiles(out: Path, tile: int) -> list[Path]:
    from PIL import Image
    img = Image.open(out)
    paths = []
    for k, top in enumerate(range(0, img.height, tile), 1):
        p = out.with_name(f"{out.stem}-{k}{out.suffix}")
        img.crop((0, top, img.width, min(img.height, top + tile))).save(p)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=9000)
    ap.add_argument("--tile", type=int, default=0, help="also write slices this many pixels tall")
    a = ap.parse_args()
    if not a.html.is_file():
        sys.exit(f"{a.html} does not exist")
    out = a.out or a.html.with_name("report.png")
    shoot(a.html, out, a.width, a.height)
    crop_blank_bottom(out)
    print(out)
    for p in tiles(out, a.tile) if a.tile else []:
        print(p)


if __name__ == "__main__":
    main()
