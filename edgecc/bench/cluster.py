"""Local worker processes and a master connected to them, for the benchmark sections that use the network."""

from __future__ import annotations

import json
from pathlib import Path


from ..launch.local import LocalWorker, memory_status


# -- worker processes ---------------------------------------------------------------------------
class LocalWorkers:
    """n local worker processes (edgecc.launch.local), optionally with an injected behaviour."""

    def __init__(self, n: int, tmp: Path, token: str, behaviour: dict | None = None, tag: str = "w"):
        extra = ["--behaviour", json.dumps(behaviour)] if behaviour is not None else []
        self.workers = [LocalWorker(tmp, f"{tag}{i}", ["--log-level", "warning", "--index", str(i), *extra], token=token)
                        for i in range(n)]
        self.n = n

    def __enter__(self) -> "LocalWorkers":
        try:
            for w in self.workers:
                w.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def ports(self) -> list[int]:
        return [w.port for w in self.workers]

    def addresses(self, n: int | None = None) -> list[tuple[str, int]]:
        return [w.address for w in self.workers[: n or self.n]]

    def status(self) -> list[dict[str, int]]:
        return [memory_status(w.pid) for w in self.workers]

    def __exit__(self, *exc) -> None:
        for w in self.workers:
            w.stop()


async def connected_master(plan, addresses, token: bytes, request_timeout: float = 60.0, **options):
    from ..master.master import Master

    m = Master(plan, addresses, token, request_timeout=request_timeout, **options)
    await m.start(wait_ready=30)
    if not await m.wait_all_ready(30):
        await m.close()
        raise RuntimeError(f"only {m.ready_count()} of {plan.N} workers connected")
    return m


def run_coroutine(coro):
    from ..process import run

    return run(coro)
