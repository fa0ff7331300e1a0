"""`clfapp serve` (infer/serve.py, cli/serve.py): the HTTP API through FastAPI's TestClient,
the port and signal behaviour of the real command, and the web page in headless Chromium."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, assert_usage_error, make_image, make_tiny_bundle

from clfapp.infer import loader
from clfapp.infer import serve as sv

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402



@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = make_tiny_bundle(root / "run", size=24)
    multi = make_tiny_bundle(root / "multi", size=24, seed=1)
    pics = [make_image(root / "img" / f"{name}{k}.png", rgb, size=(30 + 7 * k, 26), seed=k)
            for k in range(2) for name, rgb in sorted(COLOURS.items())]
    meta_path = multi / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["multi_label"] = True
    meta_path.write_text(json.dumps(meta))
    # thresholds at each label's median probability on these images: decisions that differ
    # from 0.5's (an untrained net's sigmoids sit near 0.5)
    probs, _ = loader.load(multi).probabilities([str(p) for p in pics], progress=False)
    thresholds = [round(float(t), 6) for t in np.median(probs, axis=0)]
    meta["inference"]["thresholds"] = thresholds
    meta_path.write_text(json.dumps(meta))
    return {"root": root, "run": run, "multi": multi, "images": pics, "thresholds": thresholds}


def _client(folder, **kw):
    predictor = loader.load(folder)
    return TestClient(sv.create_app(predictor, name=Path(folder).name, log=lambda line: None,
                                    **kw)), predictor


def _files(paths):
    return [("image", (Path(p).name, Path(p).read_bytes(), "application/octet-stream"))
            for p in paths]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height (RGB, 8 bit): a few rows of zeros
    compressed, what a decompression bomb looks like before it is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", rows)
            + _chunk(b"IEND", b""))


def _error_line(response, status: int) -> str:
    assert response.status_code == status, response.text
    reason = response.json()["error"]
    assert reason and "\n" not in reason
    return reason


def test_predict_one_and_several_match_the_predictor(work):
    client, predictor = _client(work["run"])
    paths = [str(p) for p in work["images"]]
    expected, kept = predictor.probabilities(paths, progress=False)
    assert list(kept) == list(range(len(paths)))
    with client:
        one = client.post("/predict", files=_files(paths[:1]))
        several = client.post("/predict?top_k=2", files=_files(paths))
    assert one.status_code == 200, one.text
    entry = one.json()["predictions"][0]
    best = int(np.argmax(expected[0]))
    assert entry["file"] == Path(paths[0]).name
    assert entry["label"] == predictor.classes[best]
    assert entry["probability"] == pytest.approx(expected[0][best], abs=1e-5)
    assert len(entry["top"]) == 3   # top_k defaults to 3 (this model has 3 classes)
    body = several.json()["predictions"]
    assert [e["file"] for e in body] == [Path(p).name for p in paths]   # in order
    for e, probs in zip(body, expected):
        order = np.argsort(-probs)[:2]
        assert [t["label"] for t in e["top"]] == [predictor.classes[i] for i in order]
        assert [t["probability"] for t in e["top"]] == pytest.approx(probs[order], abs=1e-5)


def test_multilabel_decides_at_the_models_thresholds(work):
    client, predictor = _client(work["multi"])
    paths = [str(p) for p in work["images"]]
    expected, _ = predictor.probabilities(paths, progress=False)
    thresholds = work["thresholds"]
    assert predictor.meta.multi_label
    with client:
        r = client.post("/predict", files=_files(paths))
        model = client.get("/model").json()
    assert r.status_code == 200, r.text
    assert model["multi_label"] and model["thresholds"] == thresholds
    for e, probs in zip(r.json()["predictions"], expected):
        assert e["labels"] == [c for c, p, t in zip(predictor.classes, probs, thresholds) if p >= t]
        assert list(e["probabilities"]) == predictor.classes
        assert list(e["probabilities"].values()) == pytest.approx(probs, abs=1e-5)
    # the thresholds matter here: at 0.5 for every label, some decision would differ
    assert ((expected >= np.asarray(thresholds)) != (expected >= 0.5)).any()


def test_an_onnx_export_is_served_as_its_spec_says(work, tmp_path):
    """An export folder (TTA inside its graph) answers as the PyTorch model with that TTA."""
    from clfapp.infer import export as ex
    run = make_tiny_bundle(tmp_path / "tta-run", size=24, tta_flips=["horizontal"], tta=True)
    data = work["images"][0].parent
    rows = ["path,label,split,root"] + [f"{p.name},{p.stem[:-1]},valid,{data}" for p in work["images"]]
    (run / "splits.csv").write_text("\n".join(rows) + "\n")
    folder, _ = ex.export(run)
    paths = [str(p) for p in work["images"]]
    torch_side = loader.load(run)
    expected, _ = torch_side.probabilities(paths, progress=False)   # with TTA, as its spec says
    plain, _ = torch_side.probabilities(paths, tta=False, progress=False)
    assert np.abs(plain - expected).max() > 1e-4   # TTA changes the answer: it is checked
    client, predictor = _client(folder, backend="onnx")
    with client:
        r = client.post("/predict", files=_files(paths))
        model = client.get("/model").json()
    assert r.status_code == 200, r.text
    assert model["kind"] == "onnx" and model["inference"]["tta"] is True
    for e, probs in zip(r.json()["predictions"], expected):
        got = {t["label"]: t["probability"] for t in e["top"]}
        assert [got[c] for c in predictor.classes] == pytest.approx(probs, abs=1e-4)


def test_an_ensemble_is_served(work, tmp_path):
    from clfapp.infer import ensemble
    data = work["images"][0].parent
    rows = ["path,label,split,root"] + [f"{p.name},{p.stem[:-1]},valid,{data}" for p in work["images"]]
    runs = []
    for seed in (0, 1):
        run = make_tiny_bundle(tmp_path / f"member{seed}", size=24, seed=seed)
        (run / "splits.csv").write_text("\n".join(rows) + "\n")
        runs.append(run)
    ensemble.build(runs, tmp_path, name="ens")
    client, predictor = _client(tmp_path / "ens")
    paths = [str(p) for p in work["images"]]
    expected, _ = predictor.probabilities(paths, progress=False)
    with client:
        r = client.post("/predict", files=_files(paths))
        model = client.get("/model").json()
    assert r.status_code == 200, r.text
    assert model["kind"] == "ensemble" and model["gradcam"] is False
    for e, probs in zip(r.json()["predictions"], expected):
        got = {t["label"]: t["probability"] for t in e["top"]}
        assert [got[c] for c in predictor.classes] == pytest.approx(probs, abs=1e-5)


def test_health_and_model(work):
    client, predictor = _client(work["run"])
    with client:
        health = client.get("/health")
        model = client.get("/model").json()
        missing = client.get("/nothing")
        wrong = client.get("/predict")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert "Not Found: GET /nothing" in _error_line(missing, 404)
    assert "GET /predict" in _error_line(wrong, 405)
    assert model["classes"] == predictor.classes
    assert model["kind"] == "run" and model["backend"] == "torch" and not model["multi_label"]
    assert model["inference"] == predictor.spec.to_dict()
    assert {"clfapp", "fastapi", "uvicorn", "python", "torch"} <= set(model["versions"])
    assert model["limits"]["max_bytes"] == sv.MAX_BYTES
    assert model["limits"]["max_pixels"] == sv.MAX_PIXELS


def test_bad_uploads_get_a_4xx_with_a_one_line_reason(work, tmp_path):
    client, _ = _client(work["run"], limits=sv.Limits(max_bytes=4000, max_images=4), max_batch=4)
    good = work["images"][0]
    big = make_image(tmp_path / "big.png", (10, 20, 30), size=200)   # noise: well over 4000 bytes
    assert big.stat().st_size > 4000
    truncated = good.read_bytes()[:len(good.read_bytes()) // 2]
    with client:
        not_image = client.post("/predict", files=_files([good]) + [
            ("image", ("notes.txt", b"hello, not an image", "text/plain"))])
        r_big = client.post("/predict", files=_files([big]))
        r_trunc = client.post("/predict", files=[("image", ("half.png", truncated, "image/png"))])
        r_empty = client.post("/predict", files=[("image", ("empty.png", b"", "image/png"))])
        r_none = client.post("/predict", files=[("other", ("a.png", good.read_bytes(), "image/png"))])
        r_many = client.post("/predict", files=_files([good] * 5))
        r_k = client.post("/predict?top_k=0", files=_files([good]))
        after = client.post("/predict", files=_files([good]))   # the server is still fine
    assert "image 2 (notes.txt): not an image" in _error_line(not_image, 415)
    assert "the limit is" in _error_line(r_big, 413)
    assert "truncated" in _error_line(r_trunc, 400)
    assert "empty" in _error_line(r_empty, 400)
    assert "named 'image'" in _error_line(r_none, 400)
    assert "at most 4 per request" in _error_line(r_many, 413)
    assert "top_k" in _error_line(r_k, 400)
    assert after.status_code == 200


def test_decompression_bombs_are_refused_before_decoding(work, monkeypatch):
    client, _ = _client(work["run"])
    decoded = []
    real = sv.images.read_image
    monkeypatch.setattr(sv.images, "read_image", lambda *a: decoded.append(1) or real(*a))
    with client:
        bomb = client.post("/predict", files=[("image", ("bomb.png", _png_header(50000, 50000), "image/png"))])
        over = client.post("/predict", files=[("image", ("wide.png", _png_header(8000, 6000), "image/png"))])
    assert "refused before decoding" in _error_line(bomb, 413)
    assert "48.0 megapixels; the limit is 40" in _error_line(over, 413)
    assert decoded == []   # neither was decoded


def test_a_bad_request_does_not_affect_the_good_ones_batched_with_it(work):
    """Concurrent requests, one with a bad upload: it gets its 4xx, the others their answers
    (one model call may hold them all)."""
    client, predictor = _client(work["run"], max_wait_ms=300)
    paths = [str(p) for p in work["images"][:3]]
    expected, _ = predictor.probabilities(paths, progress=False)
    out = {}

    def post(key, files):
        out[key] = client.post("/predict", files=files)

    with client:
        threads = [threading.Thread(target=post, args=(i, _files([p]))) for i, p in enumerate(paths)]
        threads.append(threading.Thread(target=post, args=("bad", [("image", ("x.jpg", b"\xff\xd8\xff junk", "image/jpeg"))])))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert out["bad"].status_code in (400, 415)
    for i in range(3):
        assert out[i].status_code == 200, out[i].text
        got = {t["label"]: t["probability"] for t in out[i].json()["predictions"][0]["top"]}
        assert [got[c] for c in predictor.classes] == pytest.approx(expected[i], abs=1e-5)


def test_concurrent_requests_are_batched(work):
    """Six concurrent one-image requests run in fewer model calls, none over --max-batch, and
    get the answers they would get alone."""
    predictor = loader.load(work["run"])
    sizes = []
    real = predictor.probabilities_by_input

    def counting(pixels, bs):
        sizes.append(len(next(iter(pixels.values()))))
        return real(pixels, bs=bs)

    predictor.probabilities_by_input = counting
    app = sv.create_app(predictor, max_batch=4, max_wait_ms=1000, log=lambda line: None)
    client = TestClient(app)
    paths = [str(p) for p in work["images"]]
    expected, _ = predictor.probabilities(paths, progress=False)
    out = {}
    with client:
        threads = [threading.Thread(target=lambda i=i, p=p: out.__setitem__(
            i, client.post("/predict", files=_files([p])))) for i, p in enumerate(paths)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert sum(sizes) == len(paths) and max(sizes) <= 4
    assert len(sizes) < len(paths), sizes
    assert app.state.batcher.calls == len(sizes)
    for i, probs in enumerate(expected):
        got = {t["label"]: t["probability"] for t in out[i].json()["predictions"][0]["top"]}
        assert [got[c] for c in predictor.classes] == pytest.approx(probs, abs=1e-5)


def test_gradcam_overlay_on_request(work):
    """POST /gradcam: report/gradcam.py's overlay of one image as a PNG at the model's input
    size, for its top label or the one asked; refused with a reason where it cannot be."""
    from clfapp.report import gradcam
    client, predictor = _client(work["run"])
    image = work["images"][0]
    pixels = np.array(sv.images.read_image(image, 24, "squish"))
    with client:
        top = client.post("/gradcam", files=_files([image]))
        red = client.post("/gradcam?label=red", files=_files([image]))
        unknown = client.post("/gradcam?label=purple", files=_files([image]))
        two = client.post("/gradcam", files=_files([image, image]))
        after = client.post("/predict", files=_files([image]))
    assert top.status_code == 200 and top.headers["content-type"] == "image/png"
    got = np.asarray(sv.Image.open(io.BytesIO(red.content)))
    want = gradcam.for_images(predictor, pixels[None], [predictor.classes.index("red")])[0]
    assert got.shape == (24, 24, 3)
    np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)
    assert "not one of the model's classes" in _error_line(unknown, 400)
    assert "one image at a time" in _error_line(two, 400)
    assert after.status_code == 200   # predictions go on, on the model's own memory format


def test_gradcam_is_refused_without_the_pytorch_model(work):
    predictor = loader.load(work["run"])
    client = TestClient(sv.create_app(predictor, backend="onnx", log=lambda line: None))
    with client:
        r = client.post("/gradcam", files=_files(work["images"][:1]))
        model = client.get("/model").json()
    assert "--backend torch" in _error_line(r, 409)
    assert model["gradcam"] is False


def test_page_is_self_contained(work):
    client, _ = _client(work["run"])
    with client:
        r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="files"' in html and "<script>" in html and "predict" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)   # no external assets


def test_port_in_use_is_one_line_exit_2(work, cli):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = cli("serve", work["run"], "--port", taken.getsockname()[1])
    finally:
        taken.close()
    assert_usage_error(result, "is in use", "--port")


def test_another_host_warns_there_is_no_authentication(work, cli, monkeypatch):
    seen = {}
    monkeypatch.setattr(sv, "serve", lambda predictor, sock, **kw: seen.update(kw) or [])
    result = cli("serve", work["run"], "--host", "0.0.0.0", "--port", 0)
    assert result.exit_code == 0, result.output
    assert "no authentication" in result.stderr
    assert seen["max_batch"] == 32 and seen["limits"].max_bytes == sv.MAX_BYTES
    quiet = cli("serve", work["run"], "--port", 0)
    assert quiet.exit_code == 0 and "authentication" not in quiet.stderr


def _start_server(run, *args):
    """`clfapp serve RUN --port 0 ARGS` in a subprocess; (process, base URL) once it listens."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(Path(sv.__file__).parents[2]),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "clfapp", "serve", str(run), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    found, line = None, ""
    for line in iter(proc.stdout.readline, ""):   # other libraries may print first
        found = re.search(r"serving .* on http://([\d.]+):(\d+)/", line)
        if found:
            break
    if not found:
        proc.kill()
        raise AssertionError(f"no serving line: {line!r} {proc.stderr.read()}")
    base = f"http://{found.group(1)}:{found.group(2)}"
    import httpx
    for _ in range(200):   # the model loads, then uvicorn starts
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the server did not come up")


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_0(work):
    import httpx

    proc, base = _start_server(work["run"], "--max-wait-ms", "1500")
    out = {}

    def post():
        with open(work["images"][0], "rb") as f:
            out["r"] = httpx.post(base + "/predict", files={"image": ("a.png", f.read())}, timeout=30)

    t = threading.Thread(target=post)
    t.start()
    time.sleep(0.5)   # the request waits in its batch (1.5 s) when SIGTERM comes
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None   # still draining: the request is in flight for another 0.7 s
    with pytest.raises(httpx.TransportError):   # but no longer accepting
        httpx.get(base + "/health", timeout=1)
    t.join(30)
    assert proc.wait(timeout=30) == 0
    assert out["r"].status_code == 200, out["r"].text
    stderr = proc.stderr.read()
    assert re.search(r"POST /predict 200 1 image [\d.]+ ms", stderr), stderr


# --- the web page in a real browser ----------------------------------------------------------

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser",
                             "/usr/bin/google-chrome") if os.path.exists(p)), None)


class _DevTools:
    """Headless Chromium driven over the DevTools protocol (a websocket; no driver binary)."""

    def __init__(self, tmp: Path):
        from websockets.sync.client import connect
        import httpx

        profile = tmp / "profile"
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.is_file() and port_file.read_text().strip():
                break
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        # the connection itself (what `with connect(...) as ws` binds); closed in close()
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None).__enter__()
        self.n = 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}: page shows {self.eval('document.body.innerText')!r}")

    def choose(self, selector, files):
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])

    def close(self):
        try:
            self.ws.close()
        finally:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium at /usr/bin/chromium: the browser test "
                    "needs the distribution's chromium package")
def test_web_page_in_a_real_browser(work, tmp_path):
    pytest.importorskip("websockets", reason="the browser test drives Chromium with websockets "
                        "(the dev extra)")
    import uvicorn

    predictor = loader.load(work["run"])
    expected, _ = predictor.probabilities([str(work["images"][0])], progress=False)
    app = sv.create_app(predictor, name="tiny", log=lambda line: None)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    browser = _DevTools(tmp_path)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"http://127.0.0.1:{sock.getsockname()[1]}/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('files')")
        browser.choose("#files", [work["images"][0]])
        verdict = browser.wait_for("(document.querySelector('.result .verdict') || {}).textContent")
        best = predictor.classes[int(np.argmax(expected[0]))]
        assert verdict.startswith(best), verdict
        assert browser.eval("document.querySelectorAll('.result .bar').length") == 3
        browser.eval("document.querySelector('.result button.explain').click()")
        assert browser.wait_for("(document.querySelector('.result img.gradcam') || {}).naturalWidth") == 24
        browser.choose("#files", [not_image])
        error = browser.wait_for("(document.querySelector('.result .error') || {}).textContent")
        assert "notes.txt" in error and "not an image" in error, error
    finally:
        browser.close()
        server.should_exit = True
        thread.join(15)
        sock.close()
