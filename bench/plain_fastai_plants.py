"""The hand-written fastai baseline clfapp is measured against (DESIGN.md §8's script).

Plant seedlings, tf_efficientnet_lite0 with offline ImageNet weights, 128 px, flips and
fastai's default augmentation, bs 64, 2 workers, fine_tune(3, freeze_epochs=1), fastai's
default learning rate. Images are squished to 128 px with bicubic resampling, as clfapp does
(fastai's default is a crop with bilinear). Prints one JSON line: the last epoch's accuracy
(the model the script ends with), the best epoch's, and seconds.
"""
import json
import sys
import time

t0 = time.perf_counter()
from fastai.vision.all import (ImageDataLoaders, Resize, ResizeMethod, accuracy,  # noqa: E402
                               aug_transforms, vision_learner)
from PIL import Image  # noqa: E402

from clfapp.models.weights import _from_pip_package  # noqa: E402  (only to find the weights file)

path = sys.argv[1] if len(sys.argv) > 1 else "../shared/datasets/plant_seedlings"
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
dls = ImageDataLoaders.from_folder(path, train="train", valid="valid", item_tfms=Resize(128, ResizeMethod.Squish, resamples=(Image.BICUBIC, Image.NEAREST)),
                                   batch_tfms=aug_transforms(flip_vert=True), bs=64, num_workers=2)
weights_file = _from_pip_package("tf_efficientnet_lite0")
learn = vision_learner(dls, "tf_efficientnet_lite0", metrics=accuracy,
                       pretrained_cfg_overlay=dict(file=str(weights_file)))
# Check the body really holds the ImageNet weights (timm may load non-strictly).
from safetensors.torch import load_file  # noqa: E402
ref = load_file(str(weights_file))["conv_stem.weight"]
assert (learn.model[0].model.conv_stem.weight.detach() == ref).all(), "backbone not pretrained"
learn.fine_tune(epochs, freeze_epochs=1)
per_epoch = [float(v[2]) for v in learn.recorder.values]  # train_loss, valid_loss, accuracy
print(json.dumps({"accuracy_last": round(per_epoch[-1], 4), "accuracy_best": round(max(per_epoch), 4),
                  "seconds": round(time.perf_counter() - t0, 1)}))
