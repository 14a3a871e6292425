"""`edgecc serve` end to end: real worker processes, a real service process, real HTTP requests,
Prometheus parsing, a worker killed under load, a drained shutdown, and the dashboard in a real
browser (Debian's chromium driven by Playwright; skipped with the reason where either is missing)."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")
pytest.importorskip("prometheus_client", reason="edgecc serve needs the serve extra (pip install 'edgecc[serve]')")

from edgecc.data import load_sample  # noqa: E402
from edgecc.serve.inputs import encode_png  # noqa: E402

from .conftest import TOKEN, WorkerProcess  # noqa: E402

CLIENT_TOKEN = "client-token-abcdef0123456789"
CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, tmp: Path, workers, *args: str, ssl_ctx=None):
        self.ctx = ssl_ctx
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "client.token").write_text(CLIENT_TOKEN + "\n")
        port_file = tmp / "serve.port"
        self.log = tmp / "serve.log"
        cmd = [sys.executable, "-m", "edgecc.cli", "serve", "--workers", ",".join(f"127.0.0.1:{w.port}" for w in workers),
               "--listen", "127.0.0.1:0", "--port-file", str(port_file), "--client-token-file", str(tmp / "client.token"),
               "--log-level", "info", *args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, "EDGECC_TOKEN": TOKEN}, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 90
        while not (port_file.exists() and port_file.read_text()):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)
        self.url = f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{int(port_file.read_text())}"
        while call(self.url + "/readyz", context=ssl_ctx)[0] != 200:
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def call(url: str, body: bytes | None = None, ctype: str | None = None, token: str | None = CLIENT_TOKEN,
         headers: dict | None = None, method: str | None = None, timeout: float = 30, context=None) -> tuple[int, dict, dict]:
    """(status, JSON body or {}, headers) of one HTTP request."""
    h = dict(headers or {})
    if ctype:
        h["Content-Type"] = ctype
    if token:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            status, raw, hdrs = r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        status, raw, hdrs = e.code, e.read(), dict(e.headers)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"_raw": raw}
    return status, doc, hdrs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    metrics_ports = [free_port() for _ in range(3)]
    workers = [WorkerProcess(tmp, f"w{i}", ["--metrics-port", str(metrics_ports[i])], {"EDGECC_TOKEN": TOKEN}).start()
               for i in range(3)]
    svc = ServeProcess(tmp / "svc", workers, "--window-ms", "5")
    yield {"svc": svc, "workers": workers, "metrics_ports": metrics_ports, "tmp": tmp}
    svc.stop()
    for w in workers:
        w.kill()


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def classify(svc, images: np.ndarray, fmt: str = "raw", **kw):
    kw.setdefault("context", svc.ctx)
    if fmt == "png":
        return call(svc.url + "/v1/classify", encode_png(images[0]), "image/png", **kw)
    if fmt == "json":
        return call(svc.url + "/v1/classify", json.dumps({"images": images.reshape(len(images), -1).tolist()}).encode(),
                    "application/json", **kw)
    return call(svc.url + "/v1/classify", images.tobytes(), "application/octet-stream", **kw)


def test_classify_png_raw_and_json(cluster, sample):
    svc = cluster["svc"]
    images, labels = sample
    status, png, _ = call(svc.url + "/v1/samples/3.png")
    assert status == 200 and png["_raw"].startswith(b"\x89PNG")
    status, doc, _ = call(svc.url + "/v1/classify", png["_raw"], "image/png")
    assert status == 200, doc
    (r,) = doc["results"]
    assert r["label"] == int(np.argmax(r["scores"])) and abs(sum(r["scores"]) - 1) < 1e-3
    assert sorted(r["decoded_by"]) == r["decoded_by"] and len(r["decoded_by"]) == 2  # AICC: any R = 2 of 3
    assert set(r["latency_ms"]) >= {"queue_wait", "encode", "workers", "decode"}
    assert r["group"]["padding_slots"] == 1 and r["group"]["padding_cost"] == 0.5  # a lone image in a K=2 group
    total = 0
    for fmt, n in (("raw", 7), ("json", 4), ("png", 1)):
        idx = np.arange(total, total + n)
        status, doc, _ = classify(svc, images[idx], fmt)
        assert status == 200, doc
        assert len(doc["results"]) == n
        got = np.array([x["label"] for x in doc["results"]])
        assert (got == labels[idx]).mean() >= 0.5  # the default model is ~91% accurate on the sample
        total += n
    # a JSON image may be 28 rows of 28
    status, doc, _ = call(svc.url + "/v1/classify", json.dumps([images[0].tolist()]).encode(), "application/json")
    assert status == 200 and len(doc["results"]) == 1


def test_an_encoded_image_of_any_size_and_mode_is_converted_to_the_models(cluster, sample):
    """A JPEG or PNG of another size and colour mode is converted to the model's 28 × 28 gray image
    (Pillow: "L", then bilinear resize) and classified as that image is."""
    from PIL import Image

    svc = cluster["svc"]
    images, labels = sample
    agree = 0
    for i in range(6):
        big = Image.fromarray(images[i]).resize((84, 84), Image.Resampling.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        big.save(buf, format="JPEG", quality=95)
        status, doc, _ = call(svc.url + "/v1/classify", buf.getvalue(), "image/jpeg")
        assert status == 200, doc
        want = np.asarray(big.convert("L").resize((28, 28), Image.Resampling.BILINEAR))
        status, ref, _ = classify(svc, want[None])
        assert status == 200, ref
        agree += doc["results"][0]["label"] == ref["results"][0]["label"]
    assert agree >= 5  # JPEG's rounding may flip a borderline image; the conversion is the same


def _png(side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(side: int) -> bytes:
    """A small PNG whose header claims side × side pixels (its IHDR rewritten, CRC and all): a
    decompression bomb as far as anything reading the header can tell."""
    import struct
    import zlib

    raw = bytearray(_png(28))
    ihdr = raw[12:29]  # b"IHDR" + width, height, depth, colour, compression, filter, interlace
    ihdr[4:12] = struct.pack(">II", side, side)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


BAD = {  # case -> (expected status, request)
    "no-token": (401, lambda svc, im: classify(svc, im[:1], token=None)),
    "wrong-token": (401, lambda svc, im: classify(svc, im[:1], token="not-the-token-000000000")),
    "content-type": (415, lambda svc, im: call(svc.url + "/v1/classify", b"hello", "text/plain")),
    "not-png": (400, lambda svc, im: call(svc.url + "/v1/classify", b"\x89PNG\r\n\x1a\ngarbage", "image/png")),
    "png-bomb": (422, lambda svc, im: call(svc.url + "/v1/classify", _png_claiming(100_000), "image/png")),
    "png-side": (422, lambda svc, im: call(svc.url + "/v1/classify", _png_claiming(9000), "image/png")),
    "not-jpeg": (400, lambda svc, im: call(svc.url + "/v1/classify", _png(28), "image/jpeg")),
    "raw-length": (400, lambda svc, im: call(svc.url + "/v1/classify", b"\0" * 100, "application/octet-stream")),
    "json": (400, lambda svc, im: call(svc.url + "/v1/classify", b"{not json", "application/json")),
    "json-pixel": (400, lambda svc, im: call(svc.url + "/v1/classify", json.dumps([[300] * 784]).encode(), "application/json")),
    "too-many": (413, lambda svc, im: classify(svc, np.zeros((65, 28, 28), np.uint8))),
    "too-large": (413, lambda svc, im: call(svc.url + "/v1/classify", b"\0" * (1 << 20), "application/octet-stream")),
    "deadline": (400, lambda svc, im: classify(svc, im[:1], headers={"X-Deadline-Ms": "soon"})),
    "method": (405, lambda svc, im: call(svc.url + "/v1/classify")),
    "route": (404, lambda svc, im: call(svc.url + "/v1/nothing")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_clear_4xx(cluster, sample, case):
    svc, images = cluster["svc"], sample[0]
    expect, send = BAD[case]
    status, doc, headers = send(svc, images)
    assert status == expect, doc
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    if expect == 401:
        assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert call(svc.url + "/healthz")[0] == 200
    status, doc, _ = classify(svc, images[:2])  # and it still classifies
    assert status == 200, doc


def test_unmeetable_deadline_is_503_with_retry_after(cluster, sample):
    svc = cluster["svc"]
    status, doc, headers = classify(svc, sample[0][:1], headers={"X-Deadline-Ms": "0.5"})
    assert status == 503, doc
    assert "deadline" in doc["error"] and int(headers["Retry-After"]) >= 1
    status, doc, _ = classify(svc, sample[0][:1], headers={"X-Deadline-Ms": "20000"})
    assert status == 200, doc


def test_metrics_parse_with_prometheus_client(cluster, sample):
    from prometheus_client.parser import text_string_to_metric_families

    svc = cluster["svc"]
    assert classify(svc, sample[0][:3])[0] == 200
    assert call(svc.url + "/metrics", token=None)[0] == 401  # the token guards metrics too
    req = urllib.request.Request(svc.url + "/metrics", headers={"Authorization": f"Bearer {CLIENT_TOKEN}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    count = {s.labels.get("code"): s.value for s in fams["edgecc_serve_requests"].samples if s.name.endswith("_total")}
    assert count["200"] >= 1
    lat = [s for s in fams["edgecc_serve_request_seconds"].samples if s.name.endswith("_count")]
    assert lat[0].value >= 1
    decoded = {s.labels["worker"]: s.value for s in fams["edgecc_serve_worker_decoded"].samples if s.name.endswith("_total")}
    assert sum(decoded.values()) >= 2
    for name in ("edgecc_serve_queue_depth", "edgecc_serve_master_late_results", "edgecc_serve_worker_ready",
                 "edgecc_serve_decode_error_bound", "edgecc_serve_stage_seconds"):
        assert name in fams, name
    # each worker's own endpoint
    for port in cluster["metrics_ports"]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["edgecc_worker_requests"].samples[0].value >= 1
        assert "process_resident_memory_bytes" in {s.name for f in fams.values() for s in f.samples}


def test_dashboard_in_a_real_browser(cluster, sample):
    if CHROMIUM is None:
        pytest.skip("no chromium (apt-get install chromium)")
    sync = pytest.importorskip("playwright.sync_api", reason="no playwright (pip install playwright)")
    svc = cluster["svc"]
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            classify(svc, sample[0][i % 100 : i % 100 + 1])
            i += 1
            time.sleep(0.02)

    with sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(svc.url + "/#token=" + CLIENT_TOKEN)
            page.wait_for_function("document.querySelectorAll('#workers tbody tr').length === 3", timeout=20000)
            first_updated = page.inner_text("#updated")
            t = threading.Thread(target=traffic, daemon=True)
            t.start()
            try:
                page.wait_for_function(
                    "(u) => document.getElementById('updated').textContent !== u && "
                    "parseFloat(document.getElementById('throughput').textContent) > 0 && "
                    "document.getElementById('p50').textContent.endsWith('ms')", arg=first_updated, timeout=20000)
                before = page.inner_text("#throughput")
                page.wait_for_function("(b) => document.getElementById('throughput').textContent !== b", arg=before,
                                       timeout=20000)
            finally:
                stop.set()
                t.join()
            assert "aicc" in page.inner_text("#config")
            assert page.inner_text("#status") == "live"
            states = page.eval_on_selector_all("#workers tbody tr", "rows => rows.map(r => r.dataset.state)")
            assert len(states) == 3 and set(states) <= {"ok", "straggler"}, states
        finally:
            browser.close()


def test_worker_killed_under_load_loses_no_request(cluster, sample):
    """Last in the module: it kills a worker. AICC decodes from any 2 of 3, so every request answers."""
    svc, images = cluster["svc"], sample[0]
    n = 80

    def one(i: int):
        time.sleep(0.03 * i)
        return classify(svc, images[i % 100 : i % 100 + 1])

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        time.sleep(0.03 * n / 2)
        cluster["workers"][2].kill()
        results = [f.result() for f in futures]
    codes = [r[0] for r in results]
    assert codes == [200] * n, [r[1] for r in results if r[0] != 200][:3]
    late = [r[1]["results"][0]["decoded_by"] for r in results[-10:]]
    assert all(2 not in d for d in late)
    status, doc, _ = call(svc.url + "/readyz")
    assert status == 200 and doc["workers_ready"] == [0, 1]


def test_full_queue_pushes_back_and_sigterm_drains(cluster, sample, tmp_path):
    """Over HTTPS: a service with a 3 s window and room for 2 queued images holds a lone image: two
    more do not fit (503 + Retry-After); SIGTERM sends the queued one at once and answers it."""
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "cert.pem"))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    svc = ServeProcess(tmp_path, cluster["workers"], "--window-ms", "3000", "--max-queue", "2", "--tls-cert",
                       str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "cert.pem"), ssl_ctx=ctx)
    with pytest.raises((OSError, http.client.HTTPException)):  # no plain HTTP on the TLS port
        urllib.request.urlopen(svc.url.replace("https", "http") + "/healthz", timeout=5)
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(classify, svc, sample[0][:1])
        time.sleep(0.5)
        status, doc, headers = classify(svc, sample[0][1:3])
        assert status == 503 and "queue full" in doc["error"] and int(headers["Retry-After"]) >= 1, doc
        t = time.monotonic()
        rc = svc.stop()
        status, doc, _ = fut.result()
    assert status == 200, doc
    assert doc["results"][0]["latency_ms"]["queue_wait"] < 2500
    assert rc == 0 and time.monotonic() - t < 10
