"""Workers as Ray actors: N edgecc workers, each a real `Worker` inside a Ray actor, reached by the
master at ray://NAME (comm/ray.py) through the same links, handshake and protocol as TCP workers.

Each actor runs the same compute specs and the same fault layer (worker/faults.py) as a worker
process. Placement: `scheduling_strategy="SPREAD"` puts the actors on different nodes where the
cluster has several (best effort: on one machine they all share it, which is what a local instance
has). Restarts: `max_restarts=-1`, so an actor that dies (its process killed, its node lost) is
restarted by Ray under the same name, and the master's link reconnects to it as it would to a
worker process that came back; calls in flight when it died are not retried (`max_task_retries=0`):
the link's reconnect replaces them, and the master has already decoded from the other workers.

Lifetime: the actors belong to this driver (Ray ends them when it exits), as local worker processes
exit with their launcher; `detached=True` keeps them for masters started later (`ray://NAME`), until
`stop()` or `ray.kill`.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

import ray

from ..comm.ray import HOST, RAY_NAMESPACE, ensure_ray
from ..errors import EdgeccError
from ..worker.faults import Faults
from ..worker.server import Worker


@dataclass(frozen=True)
class ServeWorker:
    """What each actor runs (pickled into it, and run again on a restart): a `Worker` listening at the
    actor's ray:// address. `limits`: protocol.limits.Limits, or None for the worker's defaults."""
    token: bytes
    index: int = 0
    faults: Faults | None = None
    limits: Any = None
    data_dir: str | None = None

    async def __call__(self, address: str) -> Worker:
        extra = {} if self.limits is None else {"limits": self.limits}
        # a fresh copy: the worker sets the faults' clock to its own start (a restart starts it again)
        worker = Worker(self.token, faults=copy.deepcopy(self.faults), data_dir=self.data_dir,
                        name=f"worker {self.index}", **extra)
        await worker.start(address)
        return worker


class RayWorkers:
    """N workers as Ray actors named `{prefix}-{i}`; `start()` returns their ray:// addresses, in order.

    `faults`: one per worker (or None); `num_cpus`: CPUs each actor reserves (None: Ray's default for
    actors, 1 to be placed and 0 while it runs, so N actors fit on any instance, however small)."""

    def __init__(self, n: int, token: bytes, *, faults: Sequence[Faults | None] | None = None, limits: Any = None,
                 prefix: str | None = None, namespace: str = RAY_NAMESPACE, detached: bool = False,
                 num_cpus: float | None = None, data_dir: str | None = None):
        if n < 1:
            raise EdgeccError(f"need at least one Ray worker, got {n}")
        faults = list(faults) if faults is not None else [None] * n
        if len(faults) != n:
            raise EdgeccError(f"{len(faults)} fault settings for {n} Ray workers")
        self.prefix = prefix or f"edgecc-worker-{secrets.token_hex(4)}"  # unique: several masters may share a cluster
        self.namespace, self.detached, self.num_cpus = namespace, detached, num_cpus
        self.serves = [ServeWorker(token, i, f, limits, data_dir) for i, f in enumerate(faults)]
        self.names = [f"{self.prefix}-{i}" for i in range(n)]
        self.actors: list[Any] = []
        self.placement: list[dict[str, Any]] = []  # per actor: address, pid, node_id, node_ip
        self.started_at: list[float] = []  # when each was seen serving (time.monotonic)

    @property
    def addresses(self) -> list[str]:
        return [f"ray://{name}" if self.namespace == RAY_NAMESPACE else f"ray://{self.namespace}/{name}"
                for name in self.names]

    def start(self, timeout: float = 60.0) -> list[str]:
        """Create the actors (connecting this process to Ray first if it is not), and wait until each
        one's worker listens."""
        ensure_ray()
        options: dict[str, Any] = {"namespace": self.namespace, "max_restarts": -1, "max_task_retries": 0,
                                   "scheduling_strategy": "SPREAD"}
        if self.detached:
            options["lifetime"] = "detached"
        if self.num_cpus is not None:
            options["num_cpus"] = self.num_cpus
        try:
            for name, serve in zip(self.names, self.serves):
                self.actors.append(HOST.options(name=name, **options).remote(name, self.namespace, serve))
            pending = {a.ready.remote(): i for i, a in enumerate(self.actors)}
            self.placement = [{}] * len(self.actors)
            self.started_at = [0.0] * len(self.actors)
            deadline = time.monotonic() + timeout
            while pending:  # in the order they come up: each one's clock starts when it serves
                done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    raise EdgeccError(f"Ray workers {sorted(self.names[i] for i in pending.values())} did not start "
                                      f"within {timeout:g} s (is the cluster short of resources?)")
                i = pending.pop(done[0])
                self.placement[i] = ray.get(done[0])
                self.started_at[i] = time.monotonic()
        except BaseException:
            self.stop()
            raise
        return self.addresses

    def stop(self) -> None:
        """End the actors for good (no restart)."""
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []

    def __enter__(self) -> "RayWorkers":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
