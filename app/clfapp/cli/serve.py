from __future__ import annotations

import errno
import socket
from typing import Annotated

import typer

from . import checks, common



def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@common.command
def serve(run: Annotated[str, typer.Argument(help="Run folder (or its name under runs/), an ensemble folder, or an export folder (onnx.json).")],
          host: Annotated[str, typer.Option("--host", help="Address to listen on. Loopback by default: the server has no authentication.")] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
          backend: Annotated[str, typer.Option("--backend", help="torch (the bundle) | onnx (RUN's newest export-N through ONNX Runtime; an export folder always is).")] = "torch",
          max_batch: Annotated[int, typer.Option("--max-batch", help="Most images run in one model call; also the most images one request may send.")] = 32,
          max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="How long a batch waits for more requests after its first, in milliseconds.")] = 5.0,
          max_mb: Annotated[float, typer.Option("--max-mb", help="Largest upload per image, in MB.")] = 20.0,
          max_megapixels: Annotated[float, typer.Option("--max-megapixels", help="Largest image (width x height, read from its header before decoding), in megapixels.")] = 40.0):
    """Serve a model over HTTP, with a web page to try it in a browser.

    `POST /predict` takes one or more images as multipart form fields named `image` and answers
    JSON, one entry per image in order: the top labels with their probabilities (`?top_k=3`),
    and for a multi-label model the label set decided at the model's thresholds. `GET /health`,
    `GET /model` (classes, inference spec, versions), `POST /gradcam` (one image's Grad-CAM
    overlay, a run on the torch backend), and `GET /` (the page). The model runs as
    its inference spec says (size, TTA, thresholds), as `clfapp predict` runs it. Requests are
    batched: up to --max-batch images or --max-wait-ms. A bad upload (not an image, too large,
    truncated, a decompression bomb) gets a 4xx with a one-line JSON reason; other requests are
    not affected. SIGTERM or Ctrl-C stops accepting, lets requests in flight finish (up to 10
    s) and exits 0. One log line per request on stderr. See docs/serve.md.
    """
    from ..infer import loader
    from ..models import runs

    loader.check_backend(backend)
    checks.number("--port", port, 0, 65535)
    checks.number("--max-batch", max_batch, 1)
    checks.number("--max-wait-ms", max_wait_ms, 0)
    checks.number("--max-mb", max_mb, 0, low_open=True)
    checks.number("--max-megapixels", max_megapixels, 0, low_open=True)
    folder = runs.existing(run)
    sock = bind(host, port)   # before the model loads: a taken port is said at once
    try:
        predictor = loader.load(folder, backend)
        from ..infer import serve as sv
        limits = sv.Limits(max_bytes=int(max_mb * 1024 * 1024),
                           max_pixels=int(max_megapixels * 1e6), max_images=max_batch)
        if not is_loopback(host):
            typer.echo(f"warning: listening on {host}, beyond this machine: the server has no "
                       "authentication; anyone who reaches the port can use the model",
                       err=True)
        used = "onnx" if predictor.kind == "onnx" else backend   # an export runs on onnx
        where = f"[{host}]" if ":" in host else host
        common.echo(f"serving {folder} ({predictor.kind}, {used} backend, "
                    f"{len(predictor.classes)} classes) on http://{where}:{sock.getsockname()[1]}/"
                    " ; Ctrl-C or SIGTERM stops it")
        stopped = sv.serve(predictor, sock, name=folder.name, backend=used, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, limits=limits)
    finally:
        sock.close()
    if stopped:
        common.echo("stopped: requests in flight were answered")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to listen on; a port in use (or an address
    not on this machine) is one line and exit 2."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise common.UsageError(f"--host {host}: {e.strerror or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise common.UsageError(f"port {port} on {host} is in use; choose another with "
                                    "--port") from None
        raise common.UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
