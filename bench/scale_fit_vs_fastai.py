"""A 3-epoch fit on multi-megapixel JPEGs: clfapp (decodes each image once, into its on-disk
cache, with libjpeg's reduced-scale decoding) against a plain fastai script that decodes the
originals every epoch. One whole fit per call, so that pairs of calls can be timed side by side
(alternate them, and compare the pairs' ratios, not single runs):

    python bench/scale_make.py --small 0 --big 300       # 300 JPEGs of 3000 x 3000 px under /tmp
    for i in 1 2 3; do
        .venv/bin/python bench/scale_fit_vs_fastai.py clfapp
        .venv/bin/python bench/scale_fit_vs_fastai.py fastai
    done

Same settings on both sides: the 12 class folders under --data, a seeded random 20 % held out,
resnet10t from scratch at 64 px, squished with bicubic resampling, horizontal flips only,
batch 32, one-cycle at lr 1e-2 for 3 epochs. clfapp's cache starts empty in every call (a
fresh CLFAPP_CACHE), so its one decode is inside the timed fit. Each call prints one JSON
line (accuracy of the best epoch, which clfapp keeps; fastai's last too; seconds); add `>>FILE` through `sh -c` to keep it.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
DATA = "/tmp/clfapp_scale/big"
SIZE, EPOCHS, BS, LR, VALID_PCT, SEED = 64, 3, 32, 1e-2, 0.2, 0

RECIPE = f"""# bench: 3-epoch fit on multi-megapixel JPEGs
[data]
path = "{{data}}"
size = {SIZE}
valid_pct = {VALID_PCT}
seed = {SEED}

[aug]
flip = true
max_rotate = 0.0
max_zoom = 1.0
max_warp = 0.0
max_lighting = 0.0
p_affine = 0.0

[model]
arch = "resnet10t"
pretrained = false

[train]
epochs = {EPOCHS}
freeze_epochs = 0
schedule = "one_cycle"
lr = {LR}
bs = {BS}
seed = {SEED}
"""


def clfapp(data: str) -> dict:
    """`clfapp fit RECIPE` as a user runs it (its report and bundle included)."""
    import subprocess
    work = Path(tempfile.mkdtemp(prefix="clfapp_fit_vs_fastai_"))
    (work / "bench.toml").write_text(RECIPE.format(data=data))
    env = {**os.environ, "CLFAPP_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    clfapp_bin = Path(sys.executable).with_name("clfapp")
    subprocess.run([str(clfapp_bin), "fit", "bench.toml", "--name", "bench"], cwd=work, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    m = json.loads((work / "runs" / "bench" / "metrics.json").read_text())
    return {"accuracy_best": round(float(m["accuracy"]), 4)}


def fastai(data: str) -> dict:
    from fastai.vision.all import (Flip, ImageDataLoaders, Normalize, Resize, ResizeMethod, accuracy,
                                   imagenet_stats, Learner, CrossEntropyLossFlat, set_seed)
    from PIL import Image
    import timm
    set_seed(SEED)
    dls = ImageDataLoaders.from_folder(
        data, valid_pct=VALID_PCT, seed=SEED, bs=BS, num_workers=2,
        item_tfms=Resize(SIZE, ResizeMethod.Squish, resamples=(Image.BICUBIC, Image.NEAREST)),
        batch_tfms=[Flip(), Normalize.from_stats(*imagenet_stats)])
    model = timm.create_model("resnet10t", pretrained=False, num_classes=len(dls.vocab))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    learn.fit_one_cycle(EPOCHS, LR)
    per_epoch = [float(v[2]) for v in learn.recorder.values]   # train_loss, valid_loss, accuracy
    return {"accuracy_best": round(max(per_epoch), 4), "accuracy_last": round(per_epoch[-1], 4)}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    data = sys.argv[2] if len(sys.argv) > 2 else DATA
    if which not in ("clfapp", "fastai") or not Path(data).is_dir():
        sys.exit("usage: scale_fit_vs_fastai.py clfapp|fastai [DATA]  (make DATA with bench/scale_make.py)")
    out = {"clfapp": clfapp, "fastai": fastai}[which](data)
    print(json.dumps({"which": which, **out, "seconds": round(time.perf_counter() - T0, 1)}), flush=True)
