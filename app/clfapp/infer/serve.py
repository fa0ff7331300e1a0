"""`clfapp serve`: a model behind HTTP (FastAPI on uvicorn), with a web page.

    POST /predict   one or more images as multipart form fields named `image` (query `top_k`,
                    default 3): {"predictions": [one entry per image, in order]}
    GET  /health    {"status": "ok"}
    GET  /model     classes, kind, backend, the inference spec, limits, versions
    POST /gradcam   one image (field `image`; query `label`, default the top one): its Grad-CAM
                    overlay as a PNG at the model's input size (a run on the torch backend only)
    GET  /          a page to drop or choose images and see their top labels as bars

Every predictor (run, ensemble, ONNX export) is run as its inference spec says, through
`probabilities_by_input`, on images decoded as `data/images.read_image` decodes them.

Requests are batched dynamically: each one's images are decoded in a thread (a bad upload is
refused there, with a 4xx and a one-line reason, before it meets any other request), then
queued; one worker takes what is queued, up to `max_batch` images or `max_wait_ms` after the
first arrived, and runs the model once on them in its own thread.
"""
from __future__ import annotations

import asyncio
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import Request   # here, not in create_app: FastAPI reads the handlers' annotations
from PIL import Image

from ..data import images
from ..models.decisions import decision_thresholds
from ..report import templates
from .decoding import distinct

MAX_BYTES = 20 * 1024 * 1024
"""Default upload limit per image (--max-mb 20)."""
MAX_PIXELS = 40_000_000
"""Default image size limit, width x height read from the header (--max-megapixels 40)."""
DRAIN_S = 10
"""How long SIGTERM waits for in-flight requests before the server exits."""
TOP_K = 3


class BadUpload(Exception):
    """An upload the server refuses: an HTTP status (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    max_images: int = 32
    """Images per request: --max-batch (a request is never split across model calls)."""

    @property
    def max_body(self) -> int:
        """The largest request body taken: every image at its limit, plus room for the form."""
        return self.max_images * self.max_bytes + 1024 * 1024


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def decode_upload(data: bytes, inputs, limits: Limits) -> dict:
    """{(size, resize): S x S x 3 uint8} of one uploaded file, for each of the model's inputs;
    BadUpload when it is empty, too large in bytes or in pixels (read from the header: a
    decompression bomb is refused before anything is decoded), not an image, or truncated."""
    if not data:
        raise BadUpload(400, "empty upload")
    if len(data) > limits.max_bytes:
        raise BadUpload(413, f"{_mb(len(data))}; the limit is {_mb(limits.max_bytes)}")
    try:
        with Image.open(io.BytesIO(data)) as img:   # reads the header only
            width, height = img.size
    except Image.DecompressionBombError as e:
        raise BadUpload(413, f"refused before decoding: {e}") from None
    except (OSError, ValueError, SyntaxError):
        raise BadUpload(415, "not an image (no format PIL reads)") from None
    if width * height > limits.max_pixels:
        raise BadUpload(413, f"{width}x{height} is {width * height / 1e6:.1f} megapixels; the "
                             f"limit is {limits.max_pixels / 1e6:g} (refused before decoding)")
    try:
        return {key: images.read_image(io.BytesIO(data), *key) for key in distinct(inputs)}
    except Image.DecompressionBombError as e:
        raise BadUpload(413, f"refused before decoding: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BadUpload(400, f"cannot be decoded (truncated or corrupt): {reason}") from None


def answer(probs: np.ndarray, meta, classes: list[str], top_k: int) -> dict:
    """One image's entry: the top-k labels with their probabilities (`top`), and the decision:
    `label` and `probability` (single-label), or the label set at the model's thresholds
    (`labels`) and every label's probability (multi-label)."""
    k = min(top_k, len(classes))
    order = np.argsort(-probs, kind="stable")[:k]
    top = [{"label": classes[i], "probability": round(float(probs[i]), 6)} for i in order]
    if getattr(meta, "multi_label", False):
        on = probs >= decision_thresholds(meta)
        return {"labels": [c for c, yes in zip(classes, on) if yes],
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
                "top": top}
    return {"label": top[0]["label"], "probability": top[0]["probability"], "top": top}


class Batcher:
    """An asyncio queue of decoded requests and one worker that runs the model on what is
    queued, up to `max_batch` images or `max_wait_s` after the first, in a thread of its own
    (the event loop keeps taking requests meanwhile). `calls` counts model calls."""

    def __init__(self, predict, inputs, max_batch: int, max_wait_s: float):
        self.predict, self.inputs = predict, distinct(inputs)
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.calls = 0
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self._held = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clfapp-model")
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def on_model_thread(self, fn, *args):
        """`fn(*args)` on the thread that runs the model, between batches (Grad-CAM)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, pixels: list[dict]) -> np.ndarray:
        """Probabilities (N x C) of one request's decoded images."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((pixels, future))
        return await future

    async def _next_batch(self) -> list:
        loop = asyncio.get_running_loop()
        first = self._held or await self.queue.get()
        self._held = None
        batch, n = [first], len(first[0])
        deadline = loop.time() + self.max_wait_s
        while n < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if n + len(item[0]) > self.max_batch:
                self._held = item   # first in the next batch
                break
            batch.append(item)
            n += len(item[0])
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            pending = [(p, f) for p, f in batch if not f.done()]   # a client that left: skip it
            if not pending:
                continue
            pixels = {key: np.stack([img[key] for p, _ in pending for img in p])
                      for key in self.inputs}
            try:
                probs = await loop.run_in_executor(self._executor, self.predict, pixels)
                self.calls += 1
            except Exception as e:   # the model failed: these requests get a 500, the server lives
                for _, f in pending:
                    if not f.done():
                        f.set_exception(e)
                continue
            start = 0
            for p, f in pending:
                if not f.done():
                    f.set_result(probs[start:start + len(p)])
                start += len(p)


def can_explain(predictor) -> bool:
    """Grad-CAM needs the PyTorch model: a run (or bundle) on the torch backend."""
    return getattr(predictor, "kind", "") == "run" and hasattr(predictor, "model")


def gradcam_png(predictor, pixels: np.ndarray, label: int) -> bytes | None:
    """The Grad-CAM overlay of one decoded image (S x S x 3) for class `label`, as PNG bytes;
    None when the model has no feature map to explain."""
    import torch

    from ..report import gradcam
    try:
        overlays = gradcam.for_images(predictor, np.array(pixels[None]), [label])
    finally:   # for_images leaves the weights contiguous: back to predict's memory format
        predictor.model.to(memory_format=torch.channels_last)
    if overlays is None:
        return None
    out = io.BytesIO()
    Image.fromarray(overlays[0]).save(out, format="PNG")
    return out.getvalue()


def _versions(predictor) -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("clfapp", "fastapi", "uvicorn", "torch", "onnxruntime", "numpy", "pillow"):
        if name in ("torch", "onnxruntime") and name not in sys.modules:
            continue   # the backend this server does not run
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    trained = getattr(predictor.meta, "versions", None)
    if trained:
        out["model_trained_with"] = dict(trained)
    return out


def describe(predictor, name: str, backend: str, limits: Limits, max_batch: int,
             max_wait_ms: float) -> dict:
    """GET /model."""
    meta = predictor.meta
    multi = bool(getattr(meta, "multi_label", False))
    return {"name": name, "kind": predictor.kind, "backend": backend,
            "classes": list(predictor.classes), "multi_label": multi,
            "thresholds": [float(t) for t in decision_thresholds(meta)] if multi else None,
            "inference": predictor.spec.to_dict(),
            "inputs": [{"size": s, "resize": r} for s, r in distinct(predictor.inputs)],
            "gradcam": can_explain(predictor) and backend == "torch",
            "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms},
            "limits": {**asdict(limits), "max_images_per_request": limits.max_images},
            "versions": _versions(predictor)}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def create_app(predictor, *, name: str = "model", backend: str = "torch", max_batch: int = 32,
               max_wait_ms: float = 5.0, limits: Limits | None = None, log=_log):
    """The ASGI app serving `predictor` (any of loader.load's). `app.state.batcher.calls`
    counts model calls."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    limits = limits or Limits(max_images=max_batch)
    bs = max(1, max_batch)
    batcher = Batcher(lambda pixels: predictor.probabilities_by_input(pixels, bs=bs),
                      predictor.inputs, max_batch, max_wait_ms / 1000.0)
    model_info = describe(predictor, name, backend, limits, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    # no /docs: FastAPI's pages load their scripts from a CDN, and this server works offline
    app = FastAPI(title=f"clfapp serve: {name}", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    def refuse(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": " ".join(reason.split())}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):   # 404, 405: the same one line
        return refuse(e.status_code, f"{e.detail}: {request.method} {request.url.path}")

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            n = getattr(request.state, "images", 0)
            log(f"{request.method} {request.url.path} {status} {n} image{'s' if n != 1 else ''} "
                f"{(time.perf_counter() - t0) * 1000:.1f} ms")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model():
        return model_info

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return templates.render(
            "serve.html", title=f"clfapp serve: {name}", nav=[], model_name=name,
            kind=predictor.kind, backend=backend, classes=list(predictor.classes),
            spec=predictor.spec.describe(), max_mb=f"{limits.max_bytes / 1024 / 1024:g}",
            max_mp=f"{limits.max_pixels / 1e6:g}", max_images=limits.max_images,
            gradcam=model_info["gradcam"])

    async def read_images(request: Request):
        """(uploads, decoded images) of a multipart request, or the JSONResponse refusing it."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_body:
            return refuse(413, f"request body of {_mb(int(length))}; the limit is "
                               f"{limits.max_images} image(s) of {_mb(limits.max_bytes)}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return refuse(415, "send the images as multipart/form-data fields named 'image'")
        try:
            form = await request.form(max_files=limits.max_images, max_fields=limits.max_images)
        except HTTPException as e:   # starlette's: a malformed body, too many files or fields
            if "Too many files" in str(e.detail):
                return refuse(413, f"more than {limits.max_images} images; at most "
                                   f"{limits.max_images} per request (--max-batch)")
            return refuse(400, f"bad multipart body: {e.detail}")
        try:
            uploads = [u for u in form.getlist("image") if hasattr(u, "read")]
            if not uploads:
                return refuse(400, "no image: send one or more files as form fields named 'image'")
            if len(uploads) > limits.max_images:
                return refuse(413, f"{len(uploads)} images; at most {limits.max_images} per "
                                   "request (--max-batch)")
            request.state.images = len(uploads)
            pixels = []
            for i, upload in enumerate(uploads, 1):
                where = f"image {i} ({upload.filename or 'unnamed'})"
                if upload.size is not None and upload.size > limits.max_bytes:
                    return refuse(413, f"{where}: {_mb(upload.size)}; the limit is "
                                       f"{_mb(limits.max_bytes)}")
                data = await upload.read()
                try:
                    pixels.append(await run_in_threadpool(decode_upload, data, predictor.inputs,
                                                          limits))
                except BadUpload as e:
                    return refuse(e.status, f"{where}: {e.reason}")
        finally:
            await form.close()
        return uploads, pixels

    @app.post("/predict")
    async def predict(request: Request):
        raw_k = request.query_params.get("top_k", str(TOP_K))
        try:
            top_k = int(raw_k)
            if top_k < 1:
                raise ValueError
        except ValueError:
            return refuse(400, f"top_k must be a whole number of at least 1, got {raw_k!r}")
        got = await read_images(request)
        if isinstance(got, JSONResponse):
            return got
        uploads, pixels = got
        try:
            probs = await batcher.submit(pixels)
        except Exception as e:   # the model failed on this batch
            return refuse(500, f"prediction failed: {type(e).__name__}: {e}")
        return {"model": name, "predictions": [
            {"file": u.filename or "", **answer(p, predictor.meta, predictor.classes, top_k)}
            for u, p in zip(uploads, probs)]}

    @app.post("/gradcam")
    async def explain(request: Request):
        if not model_info["gradcam"]:
            return refuse(409, "Grad-CAM needs the PyTorch model: serve a run with --backend "
                               "torch")
        label = request.query_params.get("label")
        if label is not None and label not in predictor.classes:
            return refuse(400, f"label {label!r} is not one of the model's classes")
        got = await read_images(request)
        if isinstance(got, JSONResponse):
            return got
        uploads, pixels = got
        if len(uploads) != 1:
            return refuse(400, f"Grad-CAM explains one image at a time, got {len(uploads)}")
        image = pixels[0][predictor.inputs[0]]
        if label is None:
            probs = await batcher.submit(pixels)
            index = int(np.argmax(probs[0]))
        else:
            index = predictor.classes.index(label)
        png = await batcher.on_model_thread(gradcam_png, predictor, image, index)
        if png is None:
            return refuse(409, "this model has no feature map to explain")
        return Response(png, media_type="image/png")

    return app


def serve(predictor, sock, *, name: str, backend: str, max_batch: int, max_wait_ms: float,
          limits: Limits) -> list[int]:
    """Serve on the bound socket `sock` until SIGINT/SIGTERM: accepting stops, requests in
    flight get up to DRAIN_S seconds to finish. Returns the signals that stopped it (they are
    not raised again: a stop asked for is a clean exit)."""
    import uvicorn

    Image.MAX_IMAGE_PIXELS = max(limits.max_pixels, 1)   # PIL's own bomb check, at our limit
    app = create_app(predictor, name=name, backend=backend, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, limits=limits)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=DRAIN_S, server_header=False)
    server = _server_class(uvicorn)(config)
    server.run(sockets=[sock])
    return server.stopped_by


def _server_class(uvicorn):
    class Server(uvicorn.Server):
        """uvicorn's server, except that the signal which stopped it is not raised again once
        it has drained (uvicorn re-raises it, so SIGTERM would end the process with 143, not 0)."""

        stopped_by: list[int] = []

        async def _serve(self, sockets=None) -> None:
            await super()._serve(sockets)
            self.stopped_by = list(self._captured_signals)
            self._captured_signals.clear()

    return Server
