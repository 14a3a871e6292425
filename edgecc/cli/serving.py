"""Commands for coded inference as a service: serve (HTTP in front of a master), load (an open-loop client)."""

from __future__ import annotations

import json
import sys

import click

from .group import main
from .options import SchemeName, collect_scheme_options, scheme_options, setup_logging


@main.command()
@click.option("--workers", default="", help="comma-separated HOST:PORT of the N workers, in α order (none for a "
              "scheme without workers, e.g. local)")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for HTTP (port 0 picks a free one)")
@click.option("--scheme", type=SchemeName(), default="aicc", show_default=True,
              help="any registered scheme (`edgecc schemes` lists them with their options)")
@scheme_options
@click.option("--window-ms", type=float, default=None, help="batching window: longest an image waits for K-1 others "
              "[default: edgecc.serve.app.DEFAULT_WINDOW_MS, from results/serve-sweep.md]")
@click.option("--max-queue", type=int, default=1024, show_default=True, help="images waiting; beyond it: 503 + Retry-After")
@click.option("--max-groups", type=int, default=8, show_default=True, help="groups of K sent to the workers as one request")
@click.option("--max-in-flight", type=int, default=32, show_default=True, help="requests at the workers at once")
@click.option("--max-images", type=int, default=64, show_default=True, help="images per HTTP request")
@click.option("--timeout", "request_timeout", type=float, default=10.0, show_default=True, help="seconds a worker request may take")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True, help="seconds to finish accepted requests on SIGTERM")
@click.option("--wait", type=float, default=10.0, show_default=True, help="seconds to wait for R workers at start")
@click.option("--token-file", default=None, help="the workers' shared token [default: $EDGECC_TOKEN_FILE or $EDGECC_TOKEN]")
@click.option("--tls-ca", default=None, help="CA file: connect to workers with TLS and verify them against it")
@click.option("--client-token-file", default=None, help="file holding the bearer token clients must send (default: none required)")
@click.option("--tls-cert", default=None, help="certificate file: serve HTTPS")
@click.option("--tls-key", default=None, help="private key file for --tls-cert")
@click.option("--port-file", default=None, help="write the bound port here once listening")
@click.option("--log-level", default="warning", show_default=True)
def serve(workers, listen, scheme, k, model, placement, wire_dtype, encode_precision, byzantine, tolerance, points,
          extra_options, window_ms, max_queue, max_groups, max_in_flight, max_images, request_timeout, drain_timeout, wait,
          token_file, tls_ca, client_token_file, tls_cert, tls_key, port_file, log_level):
    """Classify images over HTTP: POST /v1/classify, dashboard at /, Prometheus at /metrics."""
    from ..protocol.auth import load_token
    from ..master.master import Master
    from ..comm import parse_address
    from ..comm.tcp import client_ssl_context, server_ssl_context
    from ..process import run
    from ..errors import EdgeccError
    from ..schemes.registry import build_plan
    from ..serve.app import DEFAULT_WINDOW_MS, Service, run_until_signalled

    setup_logging(log_level)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    addresses = [parse_address(a) for a in workers.split(",") if a.strip()]
    host, port = parse_address(listen, 8080)
    options = collect_scheme_options(extra_options, model=model, placement=placement, wire_dtype=wire_dtype,
                                     encode_precision=encode_precision, byzantine=byzantine, tolerance=tolerance,
                                     points=points)
    try:
        plan = build_plan(scheme, len(addresses), k, **options)
    except EdgeccError as e:
        raise click.UsageError(str(e)) from None
    token = load_token(token_file)
    client_token = load_token(client_token_file) if client_token_file else None
    if client_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"edgecc serve: warning: listening on {host} without --client-token-file: anyone who can reach it can classify",
                   err=True)

    async def go() -> bool:
        m = Master(plan, addresses[: plan.N], token, request_timeout=request_timeout,
                   ssl_context=client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None)
        try:
            await m.start(wait_ready=wait)
        except BaseException:
            await m.close()
            raise
        svc = Service(m, scheme, window_s=(DEFAULT_WINDOW_MS if window_ms is None else window_ms) / 1000, max_queue=max_queue,
                      max_groups=max_groups, max_in_flight=max_in_flight, max_images=max_images, client_token=client_token,
                      drain_timeout=drain_timeout)
        return await run_until_signalled(svc, host, port, server_ssl_context(tls_cert, tls_key) if tls_cert else None,
                                         port_file, announce=lambda t: click.echo(t, err=True))

    if not run(go()):
        sys.exit(1)


@main.command()
@click.argument("url")
@click.option("--rate", type=float, required=True, help="images per second (Poisson arrivals, open loop)")
@click.option("--duration", type=float, required=True, help="seconds of measured load")
@click.option("--warmup", type=float, default=0.0, show_default=True, help="seconds of unmeasured load first")
@click.option("--images-per-request", type=int, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["png", "raw", "json"]), default="png", show_default=True)
@click.option("--deadline-ms", type=float, default=None, help="send each request with this deadline")
@click.option("--client-token-file", default=None, help="bearer token file for the service")
@click.option("--tls-ca", default=None, help="CA file to verify an HTTPS service")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json-out", default=None, type=click.Path(dir_okay=False))
def load(url, rate, duration, warmup, images_per_request, fmt, deadline_ms, client_token_file, tls_ca, seed, json_out):
    """Drive an `edgecc serve` at URL with open-loop load; print latency percentiles as JSON."""
    import ssl as ssl_mod

    from ..protocol.auth import load_token
    from ..process import run
    from ..serve.load import run_load

    token = load_token(client_token_file).decode() if client_token_file else None
    ctx = ssl_mod.create_default_context(cafile=tls_ca) if tls_ca else None
    try:
        summary = run(run_load(url, rate, duration, images_per_request=images_per_request, fmt=fmt, token=token,
                               deadline_ms=deadline_ms, warmup=warmup, seed=seed, ssl=ctx))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    summary["url"] = url
    if json_out:
        from ..modelfile import atomic_write

        atomic_write(json_out, json.dumps(summary, indent=2).encode())
    click.echo(json.dumps(summary))
