"""`clfapp embed`: a model's penultimate-layer features of images, to .npy plus an index."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import checks, common
from ..config import INFER_BS, INFER_WORKERS


@common.command
def embed(model: Annotated[str, typer.Argument(help="Run folder (or its name under runs/) or ensemble folder whose features are taken. An ONNX export is refused: give the folder it was exported from.")],
          paths: Annotated[list[str], typer.Argument(help="Images, folders (recursive), or .txt/.csv lists of paths.", show_default=False)],
          out: Annotated[Path, typer.Option("--out", help="Output name FILE: writes FILE.npy (float32 N x D), FILE.csv (row, path) and FILE.meta.json (what wrote them); FILE.parquet: the index as parquet (needs pyarrow).", show_default=False)],
          bs: Annotated[int, typer.Option("--bs", help="Batch size.")] = INFER_BS,
          workers: Annotated[int, typer.Option("--workers", help="Processes decoding images ahead of the model (0: decode in this one).")] = INFER_WORKERS,
          resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: keep the rows already written to FILE and embed only the files not in them (refused when another model wrote them).")] = False):
    """Write a model's penultimate-layer features of images: one float32 row per image.

    The features are the input of the model's last Linear layer (the classifier), in eval
    mode: D = 512 with fastai's default head, twice the body's channels (the pooled body
    features) with model.head_hidden = "none". An ensemble gives its members' features side
    by side, in member order. Each image is decoded as the model's inference spec says (its
    size, resize and normalisation; each member at its own) and embedded plain: never
    TTA-averaged. Unreadable images are skipped with a warning naming them.

    Rows go to FILE.npy.part (a memory-mapped .npy, batch by batch: memory holds a batch,
    whatever the number of images) and FILE.csv.part (row, path), renamed to FILE.npy and
    FILE.csv at the end: row i of the index is row i of the array. After an interruption,
    the same command with `--resume` keeps those rows and embeds only the rest: each file
    once. Nothing is written beside the images.
    """
    from ..infer import embed as em
    from ..infer import loader
    from ..infer import predict as pr
    from ..models import runs

    checks.number("--bs", bs, 1)
    checks.number("--workers", workers, 0)
    npy, index, _ = em.outputs(out)
    checks.output_file("--out", out)
    checks.output_file("--out", npy)
    folder = runs.existing(model)
    em.refuse_onnx(folder)
    files = pr.collect_paths(paths)
    predictor = loader.load(folder)
    embedder = em.Embedder(predictor)
    sink = em.Sink(out, em.record(predictor, folder, embedder), embedder.dim, resume)
    todo = list(dict.fromkeys(f for f in files if f not in sink.done))
    if resume:
        common.echo(f"resuming {npy}: {sink.rows} rows kept, {len(todo)} of {len(files)} "
                    "files left")
    try:
        written = em.run(embedder, todo, sink, bs=bs, workers=workers)
    except KeyboardInterrupt:
        sink.close()
        common.echo(f"interrupted: {sink.rows} rows are in {em.part(npy)}; the same command "
                    "with --resume continues")
        raise
    except BaseException:
        if sink.rows == 0:
            sink.discard()
        else:
            sink.close()
        raise
    if sink.rows == 0:
        sink.discard()
        raise common.UsageError("none of the images could be read")
    sink.finish()
    common.echo(f"{sink.rows} x {embedder.dim} features written to {npy} (index {index}; "
                f"{written} embedded now)")
