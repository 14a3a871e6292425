"""The `edgecc` command line: a thin layer of click commands over the library, one module per task:
models (train, eval, export, reproduce, compare), nodes (worker, master, ping, token), serving
(serve, load) and experiments (scenario, bench)."""

from __future__ import annotations

import sys

import click

from ..errors import EdgeccError


class _Main(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgeccError as e:  # our errors are messages for the user, not tracebacks
            click.echo(f"edgecc: error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Main)
@click.version_option(package_name="edgecc")
def main() -> None:
    """Straggler-resilient coded distributed inference (AICC) for image classification."""


# the commands register themselves on `main` when their modules are imported
from . import experiments, models, nodes, serving  # noqa: E402,F401
