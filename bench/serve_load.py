"""`clfapp serve` under load, on loopback only, bounded in requests and time.

    python bench/serve_load.py MODEL IMAGES [--clients 16] [--seconds 60] [--max-requests 100000]

MODEL is what `clfapp serve` takes (a run, an ensemble, an export folder); IMAGES a folder of
images (recursive). Four phases, each printed as a table row or a line:

1. `clfapp predict MODEL IMAGES` (the model as shipped: its spec's TTA), for the reference
   labels and its images/s.
2. Clean load: --clients threads, one image per request (the folder round-robin), for --seconds:
   requests/s, p50/p95/p99 latency, errors, the load generator's own CPU use (this process's
   CPU seconds over wall seconds; the server's share of the machine is the rest), and each
   answer's label against predict's.
3. Malformed: the same for --seconds / 2 with one request in --bad-every malformed, in turn not
   an image, a truncated JPEG, a 100-megapixel PNG (header only), an empty body: every good
   request must get predict's label, every bad one a 4xx, and /health must answer throughout.
4. SIGTERM under load: clients running, the server is sent SIGTERM; every request whose
   connection was accepted must be answered (a refused connection after the stop is not a
   loss), and the server must exit 0.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "app"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "app"),
                                                        os.environ.get("PYTHONPATH", "")]))


def start_server(model: str, extra: list[str], log: Path):
    """The server's process and base URL; its stderr (one line per request) goes to `log`."""
    import httpx
    proc = subprocess.Popen([sys.executable, "-m", "clfapp", "serve", model, "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=_env())
    found, line = None, ""
    for line in iter(proc.stdout.readline, ""):   # other libraries may print first
        found = re.search(r"serving .* on http://([\d.]+):(\d+)/", line)
        if found:
            break
    if not found:
        proc.kill()
        sys.exit(f"serve did not start: {line!r}")
    base = f"http://{found.group(1)}:{found.group(2)}"
    for _ in range(1200):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("serve did not answer /health within 2 minutes")


def reference(model: str, images: list[Path], out: Path) -> tuple[dict, float]:
    """({file path: label (or the label set)}, images/s) of `clfapp predict`."""
    import pandas as pd
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(str(p) for p in images) + "\n")
    proc = subprocess.run([sys.executable, "-m", "clfapp", "predict", model, str(listing),
                           "--out", str(out)], capture_output=True, text=True, env=_env())
    if proc.returncode:
        sys.exit(f"clfapp predict failed: {proc.stderr.strip()}")
    rate = float(re.search(r"([\d.]+) images/s", proc.stdout).group(1))
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    col = "label" if "label" in df else "labels"
    return dict(zip(df["path"], df[col])), rate


def served(log: Path) -> int:
    """How many POST /predict requests the server's log says it answered (any status)."""
    return len(re.findall(r"^POST /predict \d+ ", log.read_text(errors="replace"), re.M))


def _label(entry: dict) -> str:
    return entry["label"] if "label" in entry else " ".join(entry["labels"])


def _png_bomb(side: int = 10_000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * side))) + chunk(b"IEND", b""))


def _truncated_jpeg(path: Path) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, format="JPEG")
    data = buf.getvalue()
    return data[:len(data) // 2]


class Load:
    """--clients threads posting one image per request until `seconds` pass or `budget`
    requests are sent; every `bad_every`-th request malformed (0: none)."""

    def __init__(self, base, images, expected, clients, seconds, budget, bad=(), bad_every=0,
                 fresh_connections=False):
        self.base, self.images, self.expected = base, images, expected
        self.clients, self.seconds, self.budget = clients, seconds, budget
        self.bad, self.bad_every, self.fresh = list(bad), bad_every, fresh_connections
        self.lock = threading.Lock()
        self.sent = 0
        self.latencies, self.wrong, self.errors = [], 0, []
        self.bad_answers = {}   # status -> count
        self.refused = 0        # connection refused (after a stop)
        self.stop = threading.Event()

    def _next(self):
        with self.lock:
            if self.sent >= self.budget:
                return None
            self.sent += 1
            return self.sent

    def _client(self, n):
        import httpx
        client = None if self.fresh else httpx.Client(timeout=60)
        deadline = time.perf_counter() + self.seconds
        while time.perf_counter() < deadline and not self.stop.is_set():
            k = self._next()
            if k is None:
                break
            is_bad = self.bad_every and k % self.bad_every == 0
            if is_bad:
                name, data = self.bad[(k // self.bad_every) % len(self.bad)]
            else:
                path = self.images[k % len(self.images)]
                name, data = path.name, path.read_bytes()
            t0 = time.perf_counter()
            try:
                post = client.post if client else httpx.post
                r = post(self.base + "/predict", files={"image": (name, data)}, timeout=60)
            except httpx.ConnectError:
                with self.lock:
                    self.refused += 1
                continue
            except httpx.TransportError as e:   # accepted, then lost
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
                continue
            ms = (time.perf_counter() - t0) * 1000
            with self.lock:
                if is_bad:
                    self.bad_answers[r.status_code] = self.bad_answers.get(r.status_code, 0) + 1
                elif r.status_code != 200:
                    self.errors.append(f"{r.status_code}: {r.text[:120]}")
                else:
                    self.latencies.append(ms)
                    got = _label(r.json()["predictions"][0])
                    if self.expected and got != self.expected[str(path)]:
                        self.wrong += 1
        if client:
            client.close()

    def run(self):
        threads = [threading.Thread(target=self._client, args=(i,)) for i in range(self.clients)]
        cpu0, t0 = time.process_time(), time.perf_counter()
        for t in threads:
            t.start()
        return threads, cpu0, t0

    def join(self, started):
        threads, cpu0, t0 = started
        for t in threads:
            t.join()
        self.wall = time.perf_counter() - t0
        self.cpu = time.process_time() - cpu0
        return self

    def row(self, label: str) -> str:
        lat = sorted(self.latencies)
        q = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]) if lat else (lambda p: float("nan"))
        return (f"| {label} | {len(lat) / self.wall:.1f} | {q(0.5):.0f} | {q(0.95):.0f} | "
                f"{q(0.99):.0f} | {len(self.errors)} | {self.wrong} | "
                f"{100 * self.cpu / self.wall:.0f} % of one core |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("images", type=Path)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=100_000)
    ap.add_argument("--bad-every", type=int, default=10)
    ap.add_argument("--serve-args", default="", help="more `clfapp serve` options, quoted")
    a = ap.parse_args()
    from clfapp.data import images as im
    import httpx

    files = [p.resolve() for p in im.find_images(a.images)]
    if not files:
        sys.exit(f"no images in {a.images}")
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    expected, predict_rate = reference(a.model, files, tmp / "predictions.csv")
    print(f"clfapp predict: {predict_rate:.1f} images/s on {len(files)} images (the reference labels)")
    log = tmp / "server.log"
    proc, base = start_server(a.model, a.serve_args.split(), log)
    print(f"server: {base} ({a.clients} clients, loopback)\n")
    print("| phase | requests/s | p50 ms | p95 ms | p99 ms | errors | labels unlike predict | load generator CPU |")
    print("|---|---|---|---|---|---|---|---|")
    clean = Load(base, files, expected, a.clients, a.seconds, a.max_requests)
    clean.join(clean.run())
    print(clean.row("clean"))
    bad = [("notes.txt", b"this is not an image"), ("half.jpg", _truncated_jpeg(files[0])),
           ("huge.png", _png_bomb()), ("empty.png", b"")]
    mixed = Load(base, files, expected, a.clients, a.seconds / 2, a.max_requests, bad, a.bad_every)
    started = mixed.run()
    health_failures = 0
    while any(t.is_alive() for t in started[0]):
        try:
            health_failures += httpx.get(base + "/health", timeout=5).status_code != 200
        except httpx.TransportError:
            health_failures += 1
        time.sleep(0.5)
    mixed.join(started)
    print(mixed.row(f"1 in {a.bad_every} malformed"))
    print(f"\nthroughput vs predict: {len(clean.latencies) / clean.wall / predict_rate:.0%}")
    print(f"malformed answers: {dict(sorted(mixed.bad_answers.items()))} "
          f"({'all 4xx' if all(400 <= s < 500 for s in mixed.bad_answers) else 'NOT all 4xx'}); "
          f"/health failures during it: {health_failures}")
    before = served(log)
    term = Load(base, files, expected, a.clients, 30, a.max_requests, fresh_connections=True)
    started = term.run()
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    term.stop.set()
    term.join(started)
    received = served(log) - before
    statuses = sum(e[:3].isdigit() for e in term.errors)   # answered, but not 200
    resets = len(term.errors) - statuses
    lost = received - len(term.latencies) - statuses
    # a connection still in the kernel's listen queue when the server stops listening is reset
    # without reaching it (no log line): nothing was run, the client may retry it
    print(f"SIGTERM under load: exit {code}; the server logged {received} requests, the clients "
          f"got {len(term.latencies) + statuses} answers ({'none lost' if lost == 0 else f'{lost} LOST'}); "
          f"{term.refused} connections refused and {resets} reset before reaching the server")
    for e in sorted(set(term.errors))[:5]:
        print(f"  client error: {e}")
    print(f"server log: {log}")


if __name__ == "__main__":
    main()
