"""The `edgecc` command line: a thin layer of click commands over the library, one module per task:
models (train, eval, export, reproduce, compare), nodes (worker, master, ping, token), serving
(serve, load) and experiments (scenario, bench)."""

from __future__ import annotations

from .group import main

# the commands register themselves on `main` when their modules are imported
from . import experiments, models, nodes, scheme_map, serving, systematic  # noqa: E402,F401

__all__ = ["main"]
