"""The `edgecc` command group, on which every command module registers its commands."""

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

