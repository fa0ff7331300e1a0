"""The test size a model may be used at: larger than it was trained at, when training's crops
and zoom showed it objects larger than a whole resized image does (FixRes). A proposal only:
the end of fit measures it against the training size on validation (infer/choice.py).

Training crops a random part of the image (aug.min_scale) and zooms in (aug.max_zoom), then
resizes the result to data.size, so on average an object fills more of the input than it does
when the whole image is resized to data.size, as validation and predict do. Resizing test
images to data.size times that average magnification shows objects at the size training taught
the net (Touvron et al., "Fixing the train-test resolution discrepancy", 2019; timm's pretrained
configs record such a `test_input_size`). `python bench/test_size.py RUN ...` measures it:
plant seedlings trained at 128 px scored 0.876 at 128 and 0.911 at 160 (8-view TTA).
"""
from __future__ import annotations

import math

from ..auto import SIZE_STEP


def magnification(aug) -> float:
    """How much larger than in the whole resized image an object appears, on average, in a
    training input under `aug` (an AugConfig): fastai's square random-resized crop keeps an area
    fraction s ~ U[min_scale, 1], magnifying by 1/sqrt(s), whose mean is 2 / (1 + sqrt(min_scale));
    its Zoom draws U[min_zoom, max_zoom] with probability p_affine."""
    if not aug.enabled:
        return 1.0
    crop = 2.0 / (1.0 + math.sqrt(aug.min_scale)) if aug.min_scale < 1 else 1.0
    zoom = 1.0 + aug.p_affine * ((aug.min_zoom + aug.max_zoom) / 2 - 1.0)
    return crop * zoom


def auto_test_size(size: int, aug) -> int:
    """data.size scaled by `magnification(aug)`: of data.size itself and the larger multiples of
    SIZE_STEP (the nets' total stride), the one nearest. Plants (128 px, min_scale 0.5: x1.22)
    160, idl (160 px, min_scale 0.35: x1.30) 224; fastai's default zoom alone (x1.04) leaves
    a 224 px model at 224."""
    scaled = size * magnification(aug)
    above = SIZE_STEP * math.ceil(scaled / SIZE_STEP)
    candidates = {size} | {s for s in (above - SIZE_STEP, above) if s > size}
    return min(candidates, key=lambda s: (abs(s - scaled), s))


def test_size_for(cfg) -> int:
    """The run's test size: data.test_size when given, else `auto_test_size`."""
    return cfg.data.test_size or auto_test_size(cfg.data.size, cfg.aug)


def resolved(cfg, model) -> tuple[int, str]:
    """(test size, the line saying why, or "") for a run about to train `model`: the size the
    end of fit measures beside data.size (infer/choice.py), or the only one when explicit.

    One forward pass of a blank image at that size checks the net takes it: an arch with a
    fixed input grid (a ViT's patch embedding) keeps data.size when the size was automatic,
    and an explicit data.test_size it cannot take is a usage error before any training."""
    from ..errors import UsageError
    from ..models import blank_pass
    size, chosen = cfg.data.size, test_size_for(cfg)
    if chosen == size:
        return size, ""
    try:
        blank_pass(model, chosen)
    except Exception as e:  # noqa: BLE001 (the arch's own complaint, whatever its type)
        if cfg.data.test_size:
            raise UsageError(f"data.test_size = {chosen}: {cfg.model.arch} takes only "
                             f"{size} px inputs ({str(e).splitlines()[0][:120]}); drop "
                             f"--set data.test_size or set it to {size}")
        return size, (f"test size {size} px, as trained: {cfg.model.arch} takes no other input "
                      "size, so the larger one training's crops call for is not used")
    if cfg.data.test_size:
        return chosen, f"test size {chosen} px (data.test_size), trained at {size} px"
    return chosen, (f"candidate test size {chosen} px: training's crops and zoom show objects "
                    f"{magnification(cfg.aug):.2f}x larger than a whole {size} px image does "
                    f"(FixRes); the end of fit measures it against {size} px on validation "
                    "(--set data.test_size to fix one)")
