"""The hand-written fastai multi-label baseline for the idl photos (14 labels, 128 px).

Same work as `clfapp fit idl`: the same iterative 80/20 split (seed 42), tf_efficientnet_lite0
with offline ImageNet weights, 128 px, rotation 25 and random-resized crops, bs 64,
fine_tune(2, freeze_epochs=1, base_lr=4e-3), BCE. Prints one JSON line: micro-F1 at 0.5,
micro-F1 at the best global threshold (searched on the validation predictions, as a notebook
would), both for the last epoch (the model the script ends with), the best epoch's micro-F1
at 0.5 as recorded per epoch, and seconds. Images are squished with bicubic resampling, as
clfapp does (fastai's default Resize is a crop with bilinear).
"""
import json
import sys
import time

t0 = time.perf_counter()
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from fastai.vision.all import (ColReader, DataBlock, F1ScoreMulti, ImageBlock,  # noqa: E402
                               MultiCategoryBlock, Resize, ResizeMethod, accuracy_multi,
                               aug_transforms, vision_learner)
from PIL import Image  # noqa: E402
from fastai.data.transforms import IndexSplitter  # noqa: E402

from clfapp.data.splits import iterative  # noqa: E402  (only for the same split)
from clfapp.models.weights import _from_pip_package  # noqa: E402  (only to find the weights file)

path = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/idl_multilabel"
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
df = pd.read_csv(f"{path}/labels.csv", dtype=str, keep_default_na=False)
vocab = sorted({l for s in df["labels"] for l in s.split()})
y = np.array([[l in s.split() for l in vocab] for s in df["labels"]])
valid = np.flatnonzero(iterative(y, 0.2, 42))
block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock(vocab=vocab)),
                  get_x=ColReader("fname", pref=f"{path}/images/"),
                  get_y=lambda r: r["labels"].split(),
                  splitter=IndexSplitter(valid), item_tfms=Resize(128, ResizeMethod.Squish, resamples=(Image.BICUBIC, Image.NEAREST)),
                  batch_tfms=aug_transforms(max_rotate=25.0, min_scale=0.35, size=128))
dls = block.dataloaders(df, bs=64, num_workers=2)
weights_file = _from_pip_package("tf_efficientnet_lite0")
learn = vision_learner(dls, "tf_efficientnet_lite0",
                       metrics=[accuracy_multi, F1ScoreMulti(average="micro")],
                       pretrained_cfg_overlay=dict(file=str(weights_file)))
learn.fine_tune(epochs, base_lr=4e-3, freeze_epochs=1)
# the main phase's epochs, read before get_preds (whose validation pass logs a row of its own)
f1_col = list(learn.recorder.metric_names).index("f1_score") - 1   # values leave out "epoch"
per_epoch = [float(v[f1_col]) for v in learn.recorder.values]
probs, targets = learn.get_preds()
probs, targets = probs.numpy(), targets.numpy().astype(bool)


def f1_micro(t):
    pred = probs >= t
    tp, fp, fn = (pred & targets).sum(), (pred & ~targets).sum(), (~pred & targets).sum()
    return 2 * tp / (2 * tp + fp + fn)


grid = np.round(np.arange(0.02, 0.981, 0.01), 2)
best = max(grid, key=f1_micro)
print(json.dumps({"f1_micro_at_0.5": round(float(f1_micro(0.5)), 4),
                  "f1_micro_best_epoch_at_0.5": round(max(per_epoch), 4),
                  "f1_micro_tuned": round(float(f1_micro(best)), 4), "threshold": float(best),
                  "seconds": round(time.perf_counter() - t0, 1)}))
