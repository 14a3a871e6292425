"""Commands for experiments: scenario run / sweep (stragglers, real links, load), bench."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import stop_on_sigterm_as_on_ctrl_c


@main.command()
@click.option("--quick", is_flag=True, help="fewer repeats and smaller sizes (~2 min)")
@click.option("--out", default="results/bench.json", show_default=True, help="raw results; the tables go next to it as .md")
@click.option("--sections", default=None, metavar="A,B,...",
              help="only these sections (repeat one section on its own: e.g. end_to_end or latency); default: all")
def bench(quick, out, sections):
    """Measure training throughput, master/worker cost, runtime overhead, latency and memory."""
    stop_on_sigterm_as_on_ctrl_c()  # its local workers are stopped on the way out
    from ..bench import main as run_bench, render_markdown
    from ..bench.config import SECTIONS
    from ..modelfile import atomic_write

    chosen = SECTIONS
    if sections is not None:
        chosen = tuple(s.strip() for s in sections.split(",") if s.strip())
        unknown = sorted(set(chosen) - set(SECTIONS))
        if unknown or not chosen:
            raise click.BadParameter(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", param_hint="--sections")
    result = run_bench(quick=quick, out=out, sections=chosen)
    md = render_markdown(result)
    atomic_write(Path(out).with_suffix(".md"), (md + "\n").encode())
    click.echo(md)


@main.group()
def scenario() -> None:
    """Scripted straggler scenarios (TOML files in scenarios/)."""


@scenario.command("run")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default="out", show_default=True, help="reports go to OUT/<scenario name>/")
@click.option("--quiet", is_flag=True)
def scenario_run(files, out_dir, quiet):
    """Run each scenario FILE: AICC and the comparators on the same delays; write report + plots.

    A scenario with `link` tables runs its workers behind real, shaped links (network namespaces, tc
    tbf) and needs root and iproute2; it is refused otherwise. Namespaces are removed on every exit,
    Ctrl-C and SIGTERM included."""
    from pathlib import Path

    from ..scenario.runner import run_scenario
    from ..scenario.spec import load_scenario

    stop_on_sigterm_as_on_ctrl_c()
    for f in files:
        sc = load_scenario(f)
        target = Path(out_dir) / sc.name
        bars = {}

        def factory(scheme):
            if quiet:
                return None
            bar = click.progressbar(length=sc.requests, label=f"{sc.name}: {scheme:12s}", file=click.get_text_stream("stderr"))
            bar.__enter__()
            bars[scheme] = bar
            return bar.update

        try:
            run_scenario(sc, target, factory)
        finally:
            for bar in bars.values():
                bar.__exit__(None, None, None)
        click.echo((target / "report.md").read_text())
        click.echo(f"report: {target}/report.json, plots: {target}/latency_cdf.png, {target}/accuracy_vs_p99.png")


@scenario.command("sweep")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--rates", required=True, help="comma-separated request rates (requests/s) for open-loop Poisson arrivals")
@click.option("--duration", type=float, default=None, help="seconds of arrivals per rate (default: the scenario's `requests`)")
@click.option("--out", "out_dir", default="out", show_default=True, help="results go to OUT/<scenario name>-sweep/")
@click.option("--quiet", is_flag=True)
def scenario_sweep(file, rates, duration, out_dir, quiet):
    """p50/p99/p99.9 against offered load for every scheme of FILE, and each scheme's saturation throughput.

    Each rate is a full scenario run (same seeds for every scheme); writes sweep.json, sweep.md and
    sweep.png, and each rate's own report under rate-RATE/."""
    from pathlib import Path

    from ..scenario.spec import load_scenario
    from ..scenario.sweep import run_sweep

    stop_on_sigterm_as_on_ctrl_c()
    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {rates!r}", param_hint="--rates") from None
    sc = load_scenario(file)
    target = Path(out_dir) / f"{sc.name}-sweep"

    def factory(scheme):
        if quiet:
            return None
        click.echo(f"  {scheme} ...", err=True)
        return None

    run_sweep(sc, rate_list, target, duration, factory)
    click.echo((target / "sweep.md").read_text())
    click.echo(f"sweep: {target}/sweep.json, plot: {target}/sweep.png")
