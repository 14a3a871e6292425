"""`edgecc compare-map`: the map of schemes, worst-straggler accuracy against the master's FLOPs (edgecc.scheme_map)."""

from __future__ import annotations

import click

from .group import main


@main.command("compare-map")
@click.option("--schemes", "schemes_json", default="results/schemes.json", show_default=True,
              type=click.Path(exists=True, dir_okay=False), help="`edgecc compare`'s table")
@click.option("--systematic", "systematic_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="benchmarks/systematic_encoder.py's results [default: systematic-encoder.json beside --schemes]")
@click.option("--out", "out_dir", default="results", show_default=True, help="writes OUT/scheme-map.png and OUT/scheme-map.md")
def compare_map(schemes_json, systematic_json, out_dir):
    """Each scheme at K=8 S=1 and K=2 S=1 as a point: worst-straggler accuracy against the master's FLOPs per
    image (a share of the centralized CNN's), with worker FLOPs and bytes per image beside it."""
    from ..scheme_map import write_map

    png, md = write_map(schemes_json, out_dir, systematic_json)
    click.echo(f"wrote {png} and {md}")
