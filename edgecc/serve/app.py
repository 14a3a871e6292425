"""The HTTP service: POST /v1/classify in front of a Master, with /metrics, /healthz, /readyz, the
dashboard at / and its data at /v1/stats.

POST /v1/classify, one or more images per request (at most --max-images):
  Content-Type: image/png or image/jpeg   one image of any size and colour mode, converted to the
                                          model's (C, H, W) with Pillow: to gray ("L") or RGB, then
                                          resized to W x H, bilinear (serve/inputs.py)
  Content-Type: application/octet-stream  n*C*H*W bytes, row-major uint8, channels first (the paper's
                                          model: n*784 bytes of 28x28 gray images)
  Content-Type: application/json          {"images": [...]} or a bare array; each image C*H*W integers
                                          0..255, flat or nested as the model's (H, W) / (3, H, W)
  X-Deadline-Ms: 250 (or ?deadline_ms=250) optional: answer within 250 ms of arrival or not at all
200: {"results": [{"label", "class", "scores" (softmax), "logits", "decoded_by" (worker indices),
      "error_bound", "latency_ms": {"queue_wait", "master_queue", "encode", "workers", "decode", "infer"},
      "group": {"request", "groups", "padding_slots", "padding_cost"}}], "latency_ms": {"total", ...}}
Errors are JSON {"error": message, "status": code}:
  400 malformed body or deadline; 401 missing/wrong bearer token (WWW-Authenticate: Bearer);
  404/405 wrong route or method; 413 too many images or body too large; 415 unsupported
  Content-Type; 422 an image over 8192 pixels a side; 502 the workers could not decode it;
  503 + Retry-After: queue full, deadline cannot be met, workers overloaded, or shutting down.

Clients authenticate with `Authorization: Bearer <token>` when a client token is configured
(/v1/*, /metrics); the dashboard page and the health probes are open (the page takes the token
from /#token=... and keeps it in the tab's session storage).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from importlib import resources
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..data import CLASSES
from ..protocol.images import PAPER_IMAGE, pixels
from ..schemes.base import plan_shape
from .batcher import Batcher, Rejected
from .inputs import BadInput, decode_body, encode_png
from .metrics import ServiceMetrics

log = logging.getLogger("edgecc.serve")

STATIC = {"index.html": "text/html", "dashboard.js": "text/javascript", "plot.js": "text/javascript",
          "style.css": "text/css"}
MAX_DEADLINE_MS = 600_000
DEFAULT_WINDOW_MS = 2.0  # batching window: the sweep in results/serve-sweep.md (benchmarks/serve_sweep.py) chose it


class Service:
    def __init__(self, master, scheme: str, *, window_s: float, max_queue: int = 1024, max_groups: int = 8,
                 max_in_flight: int = 32, max_images: int = 64, client_token: bytes | None = None,
                 drain_timeout: float = 30.0):
        self.master, self.scheme = master, scheme
        self.plan = master.plan
        self.K = self.plan.K
        self.image, n_classes = plan_shape(self.plan)  # what every request is converted to, and its logits
        self.class_names = _class_names(self.plan, n_classes)
        self.max_images, self.client_token, self.drain_timeout = max_images, client_token, drain_timeout
        self.metrics = ServiceMetrics(master, self.plan.N)
        self.batcher = Batcher(master, self.K, window_s=window_s, max_queue=max_queue, max_groups=max_groups,
                               max_in_flight=max_in_flight, metrics=self.metrics)
        self.draining = False
        self.runner: web.AppRunner | None = None
        self._samples: np.ndarray | None = None
        self.app = self._make_app()

    # -- lifecycle --------------------------------------------------------------------------------
    def _make_app(self) -> web.Application:
        # the body limit: the largest accepted request is max_images raw images as JSON text (~4 bytes a pixel)
        self.max_body = max(1 << 16, self.max_images * pixels(self.image) * 4 + 1024)
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.add_routes([
            web.post("/v1/classify", self.classify),
            web.get("/v1/stats", self.stats),
            web.get("/v1/samples/{index}.png", self.sample),
            web.get("/metrics", self.prom),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
        ])
        return app

    async def start(self, host: str, port: int, ssl_context=None) -> int:
        self.batcher.start()
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def shutdown(self) -> bool:
        """Stop taking work (readyz turns 503, classify answers 503), answer everything already taken,
        then close the listener and the master. True when nothing was left unanswered."""
        self.draining = True
        drained = await self.batcher.drain(self.drain_timeout)
        if self.runner:
            await self.runner.cleanup()  # waits for handlers still writing their answers
        await self.master.close()
        return drained

    # -- middleware -------------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        """Every error is JSON with a message, including aiohttp's own (413 from the body limit, 404, 405)."""
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return _error(e.status, e.reason if e.text is None or e.text.startswith(f"{e.status}:") else e.text,
                          headers={k: v for k, v in e.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")})

    def _authorized(self, request: web.Request) -> bool:
        if self.client_token is None:
            return True
        got = request.headers.get("Authorization", "")
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.client_token)

    def _require_auth(self, request: web.Request) -> None:
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="missing or wrong bearer token", headers={"WWW-Authenticate": 'Bearer realm="edgecc"'})

    # -- classify ---------------------------------------------------------------------------------
    async def classify(self, request: web.Request) -> web.Response:
        t0 = time.monotonic()
        try:
            self._require_auth(request)
        except web.HTTPUnauthorized:
            self.metrics.observe_request(401, 0, 0, [])
            raise
        try:
            deadline = self._deadline(request, t0)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise BadInput(413, f"body larger than {self.max_body} bytes") from None
            images = decode_body(request.content_type, body, self.max_images, self.image)
            if self.draining:
                raise Rejected(503, "the service is shutting down", retry_after=1)
            futures = self.batcher.submit(images, deadline)
        except BadInput as e:
            self.metrics.observe_request(e.status, 0, 0, [])
            return _error(e.status, str(e))
        except Rejected as e:
            self.metrics.observe_request(e.status, 0, 0, [])
            self.metrics.shed.labels("admission").inc()
            return _rejected(e)
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        total = time.monotonic() - t0
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            e = failed[0]
            self.metrics.observe_request(getattr(e, "status", 500), total, 0, [])
            return _rejected(e) if isinstance(e, Rejected) else _error(500, f"internal error: {type(e).__name__}")
        results = [self._result(o) for o in outcomes]
        queue = [o.meta["queue_wait_ms"] for o in outcomes]
        self.metrics.observe_request(200, total, len(results), queue)
        slowest = max(outcomes, key=lambda o: o.meta["queue_wait_ms"] + o.meta["infer_ms"]).meta
        return web.json_response({
            "results": results, "scheme": self.scheme, "K": self.K,
            "latency_ms": {"total": 1000 * total, "queue_wait": slowest["queue_wait_ms"],
                           "master_queue": slowest["master_queue_ms"], "encode": slowest["encode_ms"],
                           "workers": slowest["workers_ms"], "decode": slowest["decode_ms"]},
        })

    def _deadline(self, request: web.Request, t0: float) -> float | None:
        raw = request.headers.get("X-Deadline-Ms", request.query.get("deadline_ms"))
        if raw is None:
            return None
        try:
            ms = float(raw)
        except ValueError:
            raise BadInput(400, f"deadline {raw!r} is not a number of milliseconds") from None
        if not 0 < ms <= MAX_DEADLINE_MS:
            raise BadInput(400, f"deadline must be in (0, {MAX_DEADLINE_MS}] ms, got {raw}")
        return t0 + ms / 1000

    def _result(self, o) -> dict[str, Any]:
        z = np.asarray(o.logits, dtype=np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        label = int(z.argmax())
        m = o.meta
        return {"label": label, "class": self.class_names[label], "scores": [round(float(v), 6) for v in p],
                "logits": [round(float(v), 4) for v in z], "decoded_by": m["decoded_by"], "error_bound": m["error_bound"],
                "latency_ms": {"queue_wait": m["queue_wait_ms"], "master_queue": m["master_queue_ms"], "encode": m["encode_ms"], "workers": m["workers_ms"],
                               "decode": m["decode_ms"], "infer": m["infer_ms"]},
                "group": {"request": m["request"], "groups": m["groups"], "padding_slots": m["padding_slots"],
                          "padding_cost": m["padding_cost"]}}

    # -- everything else --------------------------------------------------------------------------
    async def stats(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        snap = self.metrics.snapshot(self.master.links, self.batcher.window_s)
        snap.update({"scheme": self.scheme, "N": self.plan.N, "K": self.K, "need": self.plan.need,
                     "queue_depth": len(self.batcher.queue), "in_flight": self.batcher.in_flight, "draining": self.draining})
        return web.json_response(snap)

    async def sample(self, request: web.Request) -> web.Response:
        """A Fashion-MNIST image from the shipped sample as PNG (something to classify when you have none), in
        the model's image shape (resized, and as RGB for a colour model)."""
        self._require_auth(request)
        if self._samples is None:
            if tuple(self.image) == PAPER_IMAGE:
                from ..data import load_sample

                self._samples = load_sample()[0]
            else:
                from ..datasets import load_arrays

                c, h, w = self.image
                self._samples = load_arrays(f"sample?size={h}x{w}&channels={c}", image=tuple(self.image))[0]
        try:
            i = int(request.match_info["index"])
        except ValueError:
            raise web.HTTPNotFound(text="sample index must be an integer") from None
        if not 0 <= i < self._samples.shape[0]:
            raise web.HTTPNotFound(text=f"sample index must be 0..{self._samples.shape[0] - 1}")
        return web.Response(body=encode_png(self._samples[i]), content_type="image/png")

    async def prom(self, request: web.Request) -> web.Response:
        self._require_auth(request)
        self.metrics.queue_depth.set(len(self.batcher.queue))
        self.metrics.in_flight.set(self.batcher.in_flight)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        if not self.batcher.running:
            return _error(503, "the grouping loop is not running")
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = {l.index for l in self.master.links if l.ready.is_set()}
        if self.draining:
            return _error(503, "draining")
        if not self.plan.reachable(ready):
            return _error(503, f"{len(ready)} of {self.plan.N} workers connected, {self.plan.need} unreachable")
        return web.json_response({"status": "ready", "workers_ready": sorted(ready)})

    async def index(self, request: web.Request) -> web.Response:
        return await self._asset("index.html")

    async def static(self, request: web.Request) -> web.Response:
        return await self._asset(request.match_info["name"])

    async def _asset(self, name: str) -> web.Response:
        if name not in STATIC:  # a fixed list: no path from the URL ever reaches the file system
            raise web.HTTPNotFound(text=f"no asset {name!r}")
        data = resources.files("edgecc.serve").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def _class_names(plan, n: int) -> list[str]:
    """The class names of the plan's model file (`classes`), Fashion-MNIST's for the paper's models, else "0".."n-1"."""
    names = (getattr(plan, "info", None) or {}).get("classes")
    if isinstance(names, (list, tuple)) and len(names) == n and all(isinstance(c, str) for c in names):
        return list(names)
    return list(CLASSES) if n == len(CLASSES) else [str(i) for i in range(n)]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status, headers=headers)


def _rejected(e: Rejected) -> web.Response:
    headers = {"Retry-After": str(max(1, int(np.ceil(e.retry_after))))} if e.retry_after is not None else None
    return _error(e.status, str(e), headers)


async def run_until_signalled(service: Service, host: str, port: int, ssl_context=None, port_file: str | None = None,
                              announce=print) -> bool:
    """Serve until SIGTERM or SIGINT, then drain; True when every accepted image was answered."""
    import signal
    from pathlib import Path

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = await service.start(host, port, ssl_context)
    if port_file:
        Path(port_file).write_text(str(bound))
    scheme = "https" if ssl_context else "http"
    announce(f"edgecc serve: {service.scheme} on {service.plan.N} workers, dashboard at {scheme}://{host}:{bound}/")
    await stop.wait()
    announce("edgecc serve: draining")
    drained = await service.shutdown()
    announce("edgecc serve: stopped" + ("" if drained else " (drain timed out: some requests were not answered)"))
    return drained
