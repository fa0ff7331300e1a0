"""Batched inference from a model bundle: paths in, class probabilities out."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..data import images
from ..errors import UsageError
from ..config import INFER_BS
from ..models.decisions import decision_thresholds
from . import model_io, spec
from .decoding import Input, gathered, input_of


def collect_paths(inputs: list[str]) -> list[str]:
    """Image files from files, folders (recursive) and .txt/.csv lists of paths."""
    import pandas as pd

    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [str(x) for x in images.find_images(p)]
        elif p.is_file() and p.suffix.lower() in (".txt", ".csv"):
            if p.suffix.lower() == ".csv":
                df = pd.read_csv(p, dtype=str)
                col = next((c for c in ("path", "fname", "file", "filename") if c in df), df.columns[0])
                names = df[col].dropna().tolist()
            else:
                names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            out += [str(Path(n) if Path(n).is_absolute() else p.parent / n) for n in names]
        elif p.is_file():
            out.append(str(p))
        else:
            raise UsageError(f"{item} does not exist")
    if not out:
        raise UsageError(f"no images found in {', '.join(inputs)}")
    return out


class _Images:
    """Decodes one image per item; unreadable files give None and a warning. Images a fit
    cached at this size (data/cache.py) are read from the cache instead, while unchanged."""

    def __init__(self, paths, size, resize):
        from ..data import cache
        self.paths, self.size, self.resize = paths, size, resize
        self.lookup = cache.Lookup(size, resize)
        self.rows = self.lookup.locate(cache.stamps(paths)) if self.lookup else None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.rows is not None and self.rows[i] is not None:
            try:
                return i, self.lookup.read(*self.rows[i])
            except (OSError, ValueError):   # its entry deleted by another process: decode it
                pass
        a = images.try_read(self.paths[i], self.size, self.resize)
        return i, a


def _collate(batch):
    import torch
    kept = [(i, a) for i, a in batch if a is not None]
    if not kept:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    idx = torch.tensor([i for i, _ in kept])
    x = torch.from_numpy(np.stack([a for _, a in kept])).permute(0, 3, 1, 2)
    return idx, x




def _mirrored(x, view: tuple[str, ...]):
    import torch
    for mirror in view:
        x = x.transpose(2, 3) if mirror == "transpose" else torch.flip(x, dims=[3 if mirror == "horizontal" else 2])
    return x.contiguous(memory_format=torch.channels_last)


class Predictor:
    """A bundle's model with its preprocessing: `probabilities(paths)`."""

    kind = "run"

    def __init__(self, run: Path):
        import torch

        from . import bundle
        self.folder = Path(run)
        self.model, self.meta = bundle.load(run)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.mean = model_io.channel_stats(self.meta.mean)
        self.std = model_io.channel_stats(self.meta.std)
        self._told_no_tta = False

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    @property
    def inputs(self) -> list[Input]:
        """The one (size, resize) this model takes its images at."""
        return [input_of(self.meta)]

    def normalise(self, x01):
        """Images in [0, 1] (N x 3 x S x S float) as this model was trained on them."""
        return model_io.normalise(x01, self.mean, self.std)

    @property
    def spec(self):
        """How this model is run (model.json `inference`): every default below is read here."""
        return self.meta.inference

    @property
    def tta_flips(self) -> list[str]:
        """The mirrors TTA averages over: those the model was trained with."""
        return self.spec.tta_flips

    def forward(self, x_uint8, tta: bool | None = None):
        """Probabilities for a uint8 N,3,S,S batch; `tta` None: as the spec says.

        TTA averages the image with its mirrors (`tta_views`), but only the mirrors training
        augmented with: a mirrored digit or text is another image, not the same one seen
        differently. For a model trained without flips, TTA is a no-op (said once on stderr).
        """
        import torch
        tta = self.spec.tta if tta is None else tta
        x = self.normalise(x_uint8.float() / 255.0).contiguous(memory_format=torch.channels_last)
        views = spec.tta_views(self.tta_flips) if tta else [()]
        if tta and len(views) == 1:
            self._say_no_tta()
        with torch.inference_mode():
            probs = self._activate(self.model(x))
            for view in views[1:]:
                probs = probs + self._activate(self.model(_mirrored(x, view)))
        return probs / len(views)

    def probabilities_per_view(self, pixels: np.ndarray, tta: bool = True,
                               bs: int = INFER_BS) -> list[np.ndarray]:
        """Probabilities of decoded images (N x S x S x 3 uint8) in each TTA view, the image
        itself first (only it when `tta` is off): fit's choice of the shipped configuration
        (infer/choice.py) runs each view once and averages them as `forward` does."""
        import torch
        views = spec.tta_views(self.tta_flips) if tta else [()]
        x_all = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        out = [[] for _ in views]
        with torch.inference_mode():
            for i in range(0, len(x_all), bs):
                x = self.normalise(x_all[i:i + bs].float() / 255.0).contiguous(
                    memory_format=torch.channels_last)
                for k, view in enumerate(views):
                    out[k].append(self._activate(self.model(_mirrored(x, view) if view else x)).numpy())
        return [np.concatenate(o) if o else np.zeros((0, len(self.classes)), np.float32) for o in out]

    def _say_no_tta(self) -> None:
        if not self._told_no_tta:
            print("note: --tta does nothing for this model: it was trained without flips, so "
                  "there is no mirror to average with", file=sys.stderr)
            self._told_no_tta = True

    def _activate(self, logits):
        return model_io.activate(logits, self.meta.multi_label)

    def probabilities_of(self, pixels: np.ndarray, tta: bool | None = None, bs: int = INFER_BS) -> np.ndarray:
        """Probabilities for already decoded images (N x S x S x 3 uint8, as images.read_image)."""
        import torch
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        return np.concatenate([self.forward(x[i:i + bs], tta).numpy() for i in range(0, len(x), bs)])

    def probabilities_by_input(self, pixels: dict, bs: int = INFER_BS) -> np.ndarray:
        """Probabilities for decoded images given per input ({(size, resize): N x S x S x 3})."""
        return self.probabilities_of(pixels[self.inputs[0]], bs=bs)

    def batches(self, paths: list[str], tta: bool | None = None, bs: int = INFER_BS, workers: int = 0):
        """(indices into `paths`, probs) per batch, in order, decoding in `workers` processes
        (0: in this one) ahead of the model: memory holds a few batches, whatever len(paths)."""
        import torch

        loader = torch.utils.data.DataLoader(
            _Images(paths, self.meta.input_size, self.meta.resize), batch_size=bs,
            num_workers=workers, collate_fn=_collate)
        for idx, x in loader:
            if len(idx):
                yield idx.numpy(), self.forward(x, tta).numpy()

    def probabilities(self, paths: list[str], tta: bool | None = None, bs: int = INFER_BS,
                      workers: int = 0, progress: bool = True):
        """(probs N'xC, kept indices into `paths`); unreadable images are skipped with a warning."""
        from fastprogress.fastprogress import progress_bar

        n = -(-len(paths) // bs)
        out, kept = [], []
        found = self.batches(paths, tta, bs, workers)
        for idx, p in (progress_bar(found, total=n) if progress and n > 3 else found):
            out.append(p)
            kept.append(idx)
        return gathered(out, kept, len(paths))


def batches(predictor, paths: list[str], tta: bool | None = None, bs: int = INFER_BS, workers: int = 0,
            chunk: int = 0):
    """(indices into `paths`, probs) piece by piece, for any predictor: a Predictor streams its
    batches; an ensemble or ONNX predictor gets `chunk` paths at a time (bounded memory)."""
    if hasattr(predictor, "batches"):
        yield from predictor.batches(paths, tta, bs, workers)
        return
    chunk = chunk or 16 * bs
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        try:
            probs, kept = predictor.probabilities(part, tta=tta, bs=bs, workers=workers,
                                                  progress=False)
        except UsageError:
            if start == 0 and len(paths) <= chunk:
                raise
            continue  # "none of the images could be read" in this chunk: they were named
        yield np.asarray(kept) + start, probs


def multilabel_table(paths: list[str], probs: np.ndarray, meta, threshold: float | None = None):
    """predictions for multi-label models: path, the predicted label set (may be empty), then
    one probability column per label."""
    import pandas as pd

    pred = probs >= decision_thresholds(meta, threshold)
    df = pd.DataFrame({"path": paths,
                       "labels": [meta.label_delim.join(c for c, on in zip(meta.classes, row) if on)
                                  for row in pred]})
    for j, c in enumerate(meta.classes):
        df[c] = probs[:, j].round(6)
    return df


def table(paths: list[str], probs: np.ndarray, classes: list[str], top_k: int = 3):
    """predictions.csv rows: path, label, probability, then the top-k labels and probabilities."""
    import pandas as pd

    k = min(top_k, len(classes))
    order = np.argsort(-probs, axis=1)[:, :k]
    df = pd.DataFrame({"path": paths,
                       "label": [classes[i] for i in order[:, 0]],
                       "probability": probs[np.arange(len(probs)), order[:, 0]].round(6)})
    for j in range(k):
        df[f"top{j + 1}"] = [classes[i] for i in order[:, j]]
        df[f"top{j + 1}_prob"] = probs[np.arange(len(probs)), order[:, j]].round(6)
    return df
