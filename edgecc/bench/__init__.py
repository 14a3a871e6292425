"""Benchmarks: `main(quick, out)` measures what edgecc costs on this machine; `render_markdown` formats it."""

from .harness import BenchConfig, main, run
from .markdown import render_markdown

__all__ = ["BenchConfig", "main", "render_markdown", "run"]
