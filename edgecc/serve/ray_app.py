"""`edgecc serve --ray`: the HTTP service on Ray Serve, as replicas that each hold a master.

Three Ray Serve applications (docs/ray.md, "The service on Ray Serve"):

    NAME-masters (no HTTP route)                        NAME (route "/", behind Ray Serve's HTTP proxy)
      EdgeccMaster: R replicas (or min..max, autoscaled)   EdgeccIngress: stateless, forwards each request
        each a Master (its own encoder, its own links        to a master replica and sends it again to
        to the one shared worker pool), the Batcher,         another one if that replica dies; /metrics,
        ServiceMetrics: serve.app.Service, unchanged         /v1/stats, /readyz from the board
    NAME-board (no HTTP route)
      EdgeccBoard: 1 replica, the replicas' latest reports (serve/aggregate.py)

The board is an application of its own so that deploying again leaves it in place: Ray Serve replaces
every deployment of an application it deploys, and the board is the service's memory across that
rolling update (the old replicas' last reports, "stopped" and drained, land on the board the new
replicas report to; the totals keep counting).

- **Same endpoints.** A master replica runs serve.app.Service's own handlers (classify, the sample
  images, the dashboard's files) behind Service's own error middleware, on a `ForwardedRequest`: the
  parts of the HTTP request the ingress passed on. So answers, errors and admission are the
  single-process service's. /metrics and /v1/stats come from the board: every replica's series and
  their sum (aggregate.py says how).
- **A replica that dies loses no accepted request.** Ray Serve's proxy answers 500 when the replica
  holding a request dies; so the proxy hands requests to the ingress, which holds nothing but the
  request and calls a master replica through a DeploymentHandle. When that call fails because the
  replica died (RayActorError: killed, its node lost), the ingress sends the request again, to
  another replica: classifying is idempotent, and the dead replica's work died with it. Up to
  MAX_ATTEMPTS replicas per request; then an explicit 503 + Retry-After. (The ingress itself, like
  Ray's proxy, holds its requests in memory: those in it when it dies are lost. It keeps no other
  state, and its replica count, --ingress-replicas, is set apart from the masters'.)
- **Graceful drain.** Ray Serve stops routing to a replica it removes (scale-down, redeploy,
  `serve.delete`) and waits for the requests it holds (graceful_shutdown_timeout_s: the drain
  timeout + 5 s) before calling `__del__`, which drains the batcher and closes the master, as Service.shutdown does.
  A replica that does not finish in time is killed, and its requests go to another replica as above.
  `shutdown` ends the whole service in the order that keeps every accepted request: the ingress
  refuses new ones (503 + Retry-After, /readyz 503; told by the board), then its application is
  deleted once it has answered the rest (the masters still up), then the masters' application.

Only this module (and the Ray transport and launcher) imports Ray (tests/test_layers.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import signal
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from typing import Any, Callable

try:
    import ray
    from ray import serve
    from ray.exceptions import RayActorError
    from starlette.requests import Request
    from starlette.responses import Response
except ImportError as e:  # the optional extra: say what to install
    from ..errors import ConfigError

    raise ConfigError("edgecc serve --ray needs Ray Serve on this machine: pip install 'edgecc[ray]'") from e

from prometheus_client import CONTENT_TYPE_LATEST

from ..comm.ray import ensure_ray
from ..errors import EdgeccError
from .aggregate import PUSH_S, STALE_S, Board, replica_report
from .app import DEFAULT_WINDOW_MS, MAX_DEADLINE_MS

log = logging.getLogger("edgecc.serve.ray")

MASTER, BOARD, INGRESS = "EdgeccMaster", "EdgeccBoard", "EdgeccIngress"
MAX_ATTEMPTS = 3  # replicas tried for one request: each failed try is a replica that died holding it
FORWARDED_HEADERS = ("authorization", "content-type", "x-deadline-ms")  # all that Service's handlers read
PASSED_BACK = ("Content-Type", "Retry-After", "WWW-Authenticate", "Allow", "Cache-Control")
DRAIN_POLL_S = 0.2  # graceful_shutdown_wait_loop_s: how often Serve looks whether a stopping replica is idle
INGRESS_PUSH_S = 0.25  # how often an ingress replica reports, and so how soon it learns that the service drains


def masters_app(name: str) -> str:
    return f"{name}-masters"


def board_app(name: str) -> str:
    return f"{name}-board"


def _apps(name: str) -> tuple[str, str, str]:
    """The service's applications, in the order they are deleted: front end, masters, board."""
    return name, masters_app(name), board_app(name)


@dataclass(frozen=True)
class ServiceConfig:
    """What every master replica builds from. It travels to each replica as a deployment argument,
    tokens included: Ray's cluster is the trust boundary (docs/ray.md)."""
    scheme: str
    workers: tuple[str, ...]  # addresses every replica can reach: ray://NAME, or HOST:PORT reachable from each node
    token: bytes
    k: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    window_s: float = DEFAULT_WINDOW_MS / 1000
    max_queue: int = 1024
    max_groups: int = 8
    max_in_flight: int = 32
    max_images: int = 64
    request_timeout: float = 10.0
    wait: float = 10.0
    drain_timeout: float = 30.0
    client_token: bytes | None = None
    tls_ca_pem: str | None = None  # the CA's text, not its path: a replica may run on another node


@dataclass(frozen=True)
class Scaling:
    """How many master replicas: `replicas` (default 1), or autoscaled between `min_replicas` and
    `max_replicas` on Ray Serve's ongoing requests per replica (`target_ongoing`, None: Serve's default)."""
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing: float | None = None
    replica_cpus: float = 1.0  # CPUs each master replica reserves (it encodes and decodes on them)
    ingress_replicas: int = 1

    def __post_init__(self):
        auto = self.min_replicas is not None or self.max_replicas is not None
        if auto and (self.min_replicas is None or self.max_replicas is None):
            raise EdgeccError("autoscaling takes both --min-replicas and --max-replicas")
        if auto and not (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise EdgeccError(f"need 0 <= min-replicas <= max-replicas, max-replicas >= 1; got {self.min_replicas}, "
                              f"{self.max_replicas}")
        if auto and self.replicas is not None:
            raise EdgeccError("--replicas is a fixed count: give it, or --min-replicas and --max-replicas, not both")
        if not auto and self.replicas is not None and self.replicas < 1:
            raise EdgeccError(f"need at least one replica, got {self.replicas}")
        if self.target_ongoing is not None and not auto:
            raise EdgeccError("--target-ongoing is for autoscaling (--min-replicas/--max-replicas)")
        if self.replica_cpus < 0 or self.ingress_replicas < 1:
            raise EdgeccError("replica CPUs must be >= 0 and ingress replicas >= 1")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None

    @property
    def count(self) -> int:
        """The fixed replica count (autoscaled: the count it starts with)."""
        if self.autoscaled:
            return max(1, self.min_replicas)
        return 1 if self.replicas is None else self.replicas

    @property
    def most(self) -> int:
        return self.max_replicas if self.autoscaled else self.count

    def master_options(self) -> dict[str, Any]:
        if not self.autoscaled:
            return {"num_replicas": self.count}
        auto: dict[str, Any] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                "initial_replicas": self.count}
        if self.target_ongoing is not None:
            auto["target_ongoing_requests"] = self.target_ongoing
        return {"autoscaling_config": auto}


# -- a master replica ------------------------------------------------------------------------------------

class ForwardedRequest:
    """The parts of an aiohttp request that serve.app.Service's handlers read (headers, query,
    content_type, match_info, read()), rebuilt from what the ingress forwarded. `body` None: the body
    was over Service's limit (the ingress stopped reading it), which read() reports as aiohttp would."""

    def __init__(self, headers: list[tuple[str, str]], query: list[tuple[str, str]], body: bytes | None, max_body: int,
                 match_info: dict[str, str]):
        from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.query = MultiDictProxy(MultiDict(query))
        self.match_info = match_info
        # aiohttp's default for a body without a Content-Type (RFC 9110 §8.3)
        self.content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower() or "application/octet-stream"
        self._body, self._max_body = body, max_body

    async def read(self) -> bytes:
        if self._body is None:
            from aiohttp import web

            raise web.HTTPRequestEntityTooLarge(max_size=self._max_body, actual_size=self._max_body + 1)
        return self._body


class MasterReplica:
    """One replica: a Master connected to every worker, and serve.app.Service around it (its batcher and
    metrics; not its HTTP listener: the ingress is the front end)."""

    async def __init__(self, config: ServiceConfig, board_app: str):
        from ..master.master import Master
        from ..schemes.registry import build_plan
        from .app import Service

        self.board = serve.get_deployment_handle(BOARD, app_name=board_app)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.actor = ray.get_runtime_context().get_actor_name() or ""
        plan = build_plan(config.scheme, len(config.workers), config.k, **config.options)
        ssl_context = None
        if config.tls_ca_pem:
            ssl_context = ssl.create_default_context(cadata=config.tls_ca_pem)
            ssl_context.check_hostname = False  # as comm.tcp.client_ssl_context(insecure_hostname=True): the CA pins them
        self.master = Master(plan, list(config.workers[: plan.N]), config.token, request_timeout=config.request_timeout,
                             ssl_context=ssl_context)
        try:
            await self.master.start(wait_ready=config.wait)
        except BaseException:
            await self.master.close()
            raise
        self.service = Service(self.master, config.scheme, window_s=config.window_s, max_queue=config.max_queue,
                               max_groups=config.max_groups, max_in_flight=config.max_in_flight,
                               max_images=config.max_images, client_token=config.client_token,
                               drain_timeout=config.drain_timeout)
        self.service.batcher.start()
        self.handlers = {"classify": self.service.classify, "sample": self.service.sample, "index": self.service.index,
                         "static": self.service.static}
        self._since = 0  # the first second of history the next report carries
        await self._push()
        self._pusher = asyncio.create_task(self._push_forever())

    async def handle(self, route: str, headers: list[tuple[str, str]], query: list[tuple[str, str]],
                     body: bytes | None, match_info: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        """One forwarded request through Service's handler for `route` and its error middleware:
        (status, headers, body) of its answer."""
        request = ForwardedRequest(headers, query, body, self.service.max_body, match_info)
        response = await self.service._errors(request, self.handlers[route])
        return response.status, [(k, v) for k, v in response.headers.items() if k in PASSED_BACK], response.body

    async def describe(self) -> dict[str, Any]:
        return {"max_body": self.service.max_body, "replica": self.replica, "actor": self.actor}

    async def check_health(self) -> None:
        """Ray Serve's health check: a replica whose grouping loop died is replaced."""
        if not self.service.batcher.running:
            raise EdgeccError("the grouping loop is not running")

    async def _push(self, state: str = "serving", drained: bool | None = None) -> None:
        report = replica_report(self.service, self.replica, self.actor, self._since, state, drained)
        try:
            async with asyncio.timeout(2 * PUSH_S):
                await self.board.push.remote(report)
        except Exception as e:  # the board restarting: the next report carries the same seconds again
            log.debug("replica %s: report not taken: %s", self.replica, e)
            return
        if report["history"]:
            self._since = report["history"][-1]["t"]

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_S)
            await self._push()

    async def __del__(self):
        """Ray Serve calls this once the replica holds no request (or its drain timed out): answer what
        the batcher still holds, close the master, and say so to the board."""
        service = getattr(self, "service", None)
        if service is None:  # the constructor failed: nothing started
            return
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()
        drained = await service.shutdown()
        await self._push("stopped", drained)


# -- the board -------------------------------------------------------------------------------------------

class BoardReplica:
    """aggregate.Board as a deployment (one replica), and the service's draining flag, which each ingress
    replica reads in the answer to its own report. Async methods: they run one at a time on the
    replica's loop (Ray Serve runs sync methods in a thread pool)."""

    def __init__(self):
        self.board = Board()
        self.draining = False
        # ingress replica -> (state: "serving", "draining" (acknowledged) or "stopped", when it last reported)
        self.ingress_state: dict[str, tuple[str, float]] = {}

    async def push(self, report: dict[str, Any]) -> None:
        self.board.push(report)

    async def push_ingress(self, ingress: str, counters: dict[str, float], state: str) -> bool:
        """An ingress replica's counters and state; the answer: whether it must refuse new requests."""
        self.board.push_ingress(ingress, counters)
        self.ingress_state[ingress] = (state, time.monotonic())
        return self.draining

    async def stats(self) -> dict[str, Any]:
        return self.board.stats()

    async def prometheus(self) -> bytes:
        return self.board.prometheus()

    async def ready(self) -> tuple[bool, str]:
        return self.board.ready()

    async def resume(self) -> None:
        """A new deployment serves: its ingress replicas take requests (a shutdown that did not finish
        may have left the flag set)."""
        self.draining = False

    async def drain(self) -> dict[str, str]:
        """From now on every ingress replica refuses new requests (at its next report); their states."""
        self.draining = True
        return await self.ingress_states()

    async def ingress_states(self) -> dict[str, str]:
        """The ingress replicas' states: those stopped, and those alive (reported within STALE_S)."""
        now = time.monotonic()
        return {i: state for i, (state, seen) in self.ingress_state.items() if state == "stopped" or now - seen < STALE_S}


# -- the ingress -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IngressConfig:
    masters_app: str
    board_app: str
    client_token: bytes | None = None


def _route(path: str) -> tuple[str | None, dict[str, str]]:
    """The service's routes (serve.app.Service._make_app) -> (route, match_info)."""
    fixed = {"/v1/classify": "classify", "/v1/stats": "stats", "/metrics": "metrics", "/healthz": "healthz",
             "/readyz": "readyz", "/": "index"}
    if path in fixed:
        return fixed[path], {}
    if path.startswith("/v1/samples/") and path.endswith(".png") and "/" not in path[len("/v1/samples/"):]:
        return "sample", {"index": path[len("/v1/samples/"):-len(".png")]}
    if path.startswith("/static/") and "/" not in path[len("/static/"):]:
        return "static", {"name": path[len("/static/"):]}
    return None, {}


def _json(status: int, doc: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc).encode(), status_code=status, headers=headers,
                    media_type="application/json; charset=utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message, "status": status}, headers)


def _rebase_deadline(headers: list[tuple[str, str]], query: list[tuple[str, str]], spent_s: float):
    """The request's deadline (X-Deadline-Ms, else ?deadline_ms) less the time it already spent here,
    so that the replica measures it from the request's arrival at the ingress. A value Service would
    refuse is passed on untouched (it answers 400). Returns (headers, query, expired)."""
    def rebased(raw: str) -> str | None:
        try:
            ms = float(raw)
        except ValueError:
            return raw
        if not 0 < ms <= MAX_DEADLINE_MS:
            return raw
        left = ms - 1000 * spent_s
        return None if left <= 0 else f"{left:.3f}"

    for i, (k, v) in enumerate(headers):
        if k.lower() == "x-deadline-ms":
            new = rebased(v)
            return (headers[:i] + [(k, new)] + headers[i + 1:], query, False) if new is not None else (headers, query, True)
    for i, (k, v) in enumerate(query):
        if k == "deadline_ms":
            new = rebased(v)
            return (headers, query[:i] + [(k, new)] + query[i + 1:], False) if new is not None else (headers, query, True)
    return headers, query, False


class Ingress:
    """The HTTP front end behind Ray Serve's proxy: holds no state but the requests in flight."""

    async def __init__(self, config: IngressConfig):
        self.masters = serve.get_deployment_handle(MASTER, app_name=config.masters_app)
        self.board = serve.get_deployment_handle(BOARD, app_name=config.board_app)
        self.client_token = config.client_token
        self.max_body = (await self.masters.describe.remote())["max_body"]
        self.id = serve.get_replica_context().replica_id.unique_id
        self.draining = False
        self.counters = {"retried": 0, "unanswered": 0}
        self._pusher = asyncio.create_task(self._push_forever())

    async def __call__(self, request: Request) -> Response:
        t0 = time.monotonic()
        route, match = _route(request.url.path)
        if route is None:
            return _error(404, "Not Found")
        allowed = "POST" if route == "classify" else "GET"
        if request.method != allowed:
            return _error(405, "Method Not Allowed", {"Allow": allowed})
        if route == "classify":
            if self.draining:
                return _error(503, "the service is shutting down", {"Retry-After": "1"})
            return await self._forward(route, request, await self._read(request), match, t0)
        if route in ("sample", "index", "static"):
            return await self._forward(route, request, b"", match, t0)
        if route == "healthz":
            return _json(200, {"status": "ok"})
        if route == "readyz":
            if self.draining:
                return _error(503, "draining")
            ready, why = await self.board.ready.remote()
            return _json(200, {"status": "ready", "replicas": why}) if ready else _error(503, why)
        if not self._authorized(request):
            return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="edgecc"'})
        if route == "stats":
            stats = await self.board.stats.remote()
            return _json(200, stats) if stats["replicas"] else _error(503, stats.get("error", "no replica"))
        return Response(await self.board.prometheus.remote(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _authorized(self, request: Request) -> bool:
        """Service._authorized's rule for the routes answered here (/v1/stats, /metrics)."""
        if self.client_token is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.client_token)

    async def _read(self, request: Request) -> bytes | None:
        """The body, or None past the replicas' limit (the rest is not read)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _forward(self, route: str, request: Request, body: bytes | None, match: dict[str, str],
                       t0: float) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS]
        query = list(request.query_params.multi_items())
        for attempt in range(1, MAX_ATTEMPTS + 1):
            h, q, expired = _rebase_deadline(headers, query, time.monotonic() - t0)
            if expired:
                return _error(503, "deadline passed before a replica could answer", {"Retry-After": "1"})
            try:
                status, got, content = await self.masters.handle.remote(route, h, q, body, match)
            except RayActorError as e:  # the replica died holding it: another one takes it
                if attempt == MAX_ATTEMPTS:
                    self.counters["unanswered"] += 1
                    return _error(503, f"{MAX_ATTEMPTS} replicas died holding this request; the last: "
                                       f"{type(e).__name__}", {"Retry-After": "1"})
                self.counters["retried"] += 1
                log.warning("ingress %s: a replica died holding a request (%s); sending it to another",
                            self.id, type(e).__name__)
                continue
            return Response(content, status_code=status, headers=dict(got))
        raise AssertionError("unreachable")

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(INGRESS_PUSH_S)
            await self._push()

    async def _push(self, state: str | None = None) -> None:
        """Report the counters; learn whether the service is shutting down (then refuse new requests)."""
        state = state or ("draining" if self.draining else "serving")
        try:
            async with asyncio.timeout(2 * PUSH_S):
                self.draining = await self.board.push_ingress.remote(self.id, dict(self.counters), state) or self.draining
        except Exception as e:
            log.debug("ingress %s: counters not taken: %s", self.id, e)

    async def __del__(self):
        """Called once every request this replica accepted has its answer (Ray Serve's graceful stop)."""
        pusher = getattr(self, "_pusher", None)
        if pusher is not None:
            pusher.cancel()
            await self._push("stopped")


# -- deploying, and the command's lifecycle ----------------------------------------------------------------

def _board():
    return serve.deployment(BoardReplica, name=BOARD, num_replicas=1, max_ongoing_requests=1000,
                            ray_actor_options={"num_cpus": 0}).bind()


def _masters(config: ServiceConfig, scaling: Scaling, name: str):
    return serve.deployment(
        MasterReplica, name=MASTER, ray_actor_options={"num_cpus": scaling.replica_cpus},
        # a replica's own admission (queue, deadlines: Service) decides what it takes, not Serve's limit
        max_ongoing_requests=config.max_queue, graceful_shutdown_timeout_s=config.drain_timeout + 5,
        graceful_shutdown_wait_loop_s=DRAIN_POLL_S, max_constructor_retry_count=3, **scaling.master_options(),
    ).bind(config, board_app(name))


def _ingress(config: ServiceConfig, scaling: Scaling, name: str):
    return serve.deployment(
        Ingress, name=INGRESS, num_replicas=scaling.ingress_replicas, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=config.max_queue * scaling.most,
        # the ingress waits for the masters' answers, which may take their own drain
        graceful_shutdown_timeout_s=config.drain_timeout + 10, graceful_shutdown_wait_loop_s=DRAIN_POLL_S,
    ).bind(IngressConfig(masters_app(name), board_app(name), config.client_token))


def _logging(level: str) -> dict[str, Any]:
    # Serve's access log writes a line per request in every replica: at these rates, a cost of its own
    return {"log_level": level.upper(), "enable_access_log": level.upper() == "DEBUG"}


def deploy(config: ServiceConfig, scaling: Scaling, name: str = "edgecc", route_prefix: str = "/",
           log_level: str = "warning") -> None:
    """Deploy the board (unless it runs already), the masters' application, then the ingress's; returns
    once all run. Deploying again replaces the masters and the ingress (Ray Serve's rolling update of an
    imperative deploy), each replica drained, and keeps the board."""
    first = scaling.count
    cpus = ray.cluster_resources().get("CPU", 0.0)
    if first * scaling.replica_cpus > cpus:  # Serve would wait for them forever
        raise EdgeccError(f"{first} replicas reserving {scaling.replica_cpus:g} CPUs each need "
                          f"{first * scaling.replica_cpus:g} CPUs; this Ray cluster has {cpus:g} (--replica-cpus "
                          "reserves fewer; a replica still uses what it needs)")
    running = serve.status().applications.get(board_app(name))
    if running is None or running.status != "RUNNING":
        serve.run(_board(), name=board_app(name), route_prefix=None, logging_config=_logging(log_level))
    serve.get_deployment_handle(BOARD, app_name=board_app(name)).resume.remote().result(timeout_s=10)
    serve.run(_masters(config, scaling, name), name=masters_app(name), route_prefix=None,
              logging_config=_logging(log_level))
    serve.run(_ingress(config, scaling, name), name=name, route_prefix=route_prefix, logging_config=_logging(log_level))


def shutdown(name: str = "edgecc", ack_timeout: float = 5.0) -> bool:
    """End the service without losing an accepted request: every ingress replica refuses new requests
    (503 + Retry-After, /readyz 503), the ingress is deleted once it has answered what it accepted (the
    masters still up), then the masters' application, then the board. True when every ingress replica stopped
    gracefully, having answered everything it accepted."""
    board = serve.get_deployment_handle(BOARD, app_name=board_app(name))
    states = board.drain.remote().result(timeout_s=10)
    deadline = time.monotonic() + ack_timeout
    while states and not all(s != "serving" for s in states.values()) and time.monotonic() < deadline:
        time.sleep(INGRESS_PUSH_S / 2)
        states = board.ingress_states.remote().result(timeout_s=10)
    serve.delete(name)
    try:
        states = board.ingress_states.remote().result(timeout_s=10)
        drained = bool(states) and all(s == "stopped" for s in states.values())
    except Exception as e:
        log.warning("could not read the ingress's final state from the board: %s", e)
        drained = False
    serve.delete(masters_app(name))
    serve.delete(board_app(name))
    return drained


def http_options(host: str, port: int, tls_cert: str | None = None, tls_key: str | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {"host": host, "port": port}
    if tls_cert:
        opts.update(ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    return opts


def _check_proxy(url: str, context) -> None:
    """The proxy at `url` serves this application (Serve keeps the HTTP options it first started with)."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10, context=context) as r:
            ok = r.status == 200
    except OSError as e:
        ok, why = False, str(e)
    else:
        why = "" if ok else "not 200"
    if not ok:
        raise EdgeccError(f"Ray Serve's proxy does not answer at {url} ({why}): Serve may already run on this cluster "
                          "with other HTTP options (they are fixed when Serve first starts; `serve shutdown` resets "
                          "them), or the proxy is not on this node")


def _deploy_error(name: str, e: BaseException) -> str:
    """Why a deploy failed: the replicas' own error (Serve keeps their constructor's traceback in the
    deployment's status message), else Serve's."""
    try:
        apps = serve.status().applications
        for app in (board_app(name), masters_app(name), name):
            for d in apps[app].deployments.values() if app in apps else ():
                errors = [line.strip() for line in (d.message or "").splitlines()
                          if re.match(r"^[\w.]*(Error|Exception)\b.*: ", line.strip())]
                if errors:
                    return errors[-1]
    except Exception:
        pass
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def run_until_signalled(config: ServiceConfig, scaling: Scaling, *, host: str, port: int, name: str = "edgecc",
                        tls_cert: str | None = None, tls_key: str | None = None, ray_workers: int = 0,
                        port_file: str | None = None, log_level: str = "warning",
                        announce: Callable[[str], None] = print) -> bool:
    """`edgecc serve --ray`: connect to Ray (RAY_ADDRESS, a running cluster, or a new local instance),
    start `ray_workers` workers as Ray actors when asked (config.workers are then replaced by theirs),
    deploy, serve until SIGTERM or SIGINT, then shut down in order. True when nothing accepted was lost."""
    ensure_ray()
    pool = None
    if ray_workers:
        from ..launch.ray_workers import RayWorkers

        pool = RayWorkers(ray_workers, config.token)
        config = replace(config, workers=tuple(pool.start()))
    try:
        serve.start(http_options=http_options(host, port, tls_cert, tls_key), logging_config=_logging(log_level))
        url = f"{'https' if tls_cert else 'http'}://{host}:{port}"
        try:
            deploy(config, scaling, name, log_level=log_level)
            _check_proxy(url, ssl._create_unverified_context() if tls_cert else None)  # only asks: is it our proxy?
        except BaseException as e:  # leave nothing half deployed on a cluster that outlives this command
            why = _deploy_error(name, e)
            for app in _apps(name):
                try:
                    serve.delete(app)
                except Exception:
                    pass
            if isinstance(e, Exception) and not isinstance(e, EdgeccError):
                raise EdgeccError(f"deploying on Ray Serve failed: {why}") from e
            raise
        if port_file:
            from pathlib import Path

            Path(port_file).write_text(str(port))
        size = (f"{scaling.min_replicas}..{scaling.max_replicas} replicas (autoscaled)" if scaling.autoscaled
                else f"{scaling.count} replica{'s' if scaling.count != 1 else ''}")
        announce(f"edgecc serve: {config.scheme} on Ray Serve, {size} of a master on {len(config.workers)} workers, "
                 f"dashboard at {url}/")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        announce("edgecc serve: draining")
        drained = shutdown(name)
        announce("edgecc serve: stopped" + ("" if drained else " (the drain timed out: some requests were not answered)"))
        return drained
    finally:
        if pool is not None:
            pool.stop()
