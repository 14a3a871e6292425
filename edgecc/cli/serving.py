"""Commands for coded inference as a service: serve (HTTP in front of a master), load (an open-loop client)."""

from __future__ import annotations

import json
import sys

import click

from .group import main
from .options import SchemeName, collect_scheme_options, scheme_options, setup_logging


@main.command()
@click.option("--workers", default="", help="comma-separated addresses of the N workers, in α order: HOST:PORT "
              "(tcp://, tls://), ray://NAME (a Ray actor) or ray:N (N Ray actors started here, docs/ray.md) (none for "
              "a scheme without workers, e.g. local)")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for HTTP (port 0 picks a free "
              "one, except with --ray: Ray Serve's proxy listens there)")
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
@click.option("--ray", "on_ray", is_flag=True, help="run on Ray Serve: replicas that each hold a master, behind Ray "
              "Serve's proxy (pip install 'edgecc[ray]'; docs/ray.md)")
@click.option("--replicas", type=int, default=None, help="--ray: master replicas [default: 1]")
@click.option("--min-replicas", type=int, default=None, help="--ray: autoscale between --min-replicas and --max-replicas")
@click.option("--max-replicas", type=int, default=None, help="--ray: see --min-replicas")
@click.option("--target-ongoing", type=float, default=None, help="--ray autoscaling: ongoing requests per replica "
              "that Ray Serve aims for [default: Ray Serve's]")
@click.option("--replica-cpus", type=float, default=None, help="--ray: CPUs each master replica reserves [default: 1]")
@click.option("--ingress-replicas", type=int, default=None, help="--ray: replicas of the stateless front end [default: 1]")
@click.option("--app-name", default=None, help="--ray: the Ray Serve application's name (its masters': NAME-masters) "
              "[default: edgecc]")
def serve(workers, listen, scheme, k, model, placement, wire_dtype, encode_precision, byzantine, tolerance, points,
          extra_options, window_ms, max_queue, max_groups, max_in_flight, max_images, request_timeout, drain_timeout, wait,
          token_file, tls_ca, client_token_file, tls_cert, tls_key, port_file, log_level, on_ray, replicas, min_replicas,
          max_replicas, target_ongoing, replica_cpus, ingress_replicas, app_name):
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
    ray_only = {"--replicas": replicas, "--min-replicas": min_replicas, "--max-replicas": max_replicas,
                "--target-ongoing": target_ongoing, "--replica-cpus": replica_cpus,
                "--ingress-replicas": ingress_replicas, "--app-name": app_name}
    if not on_ray and any(v is not None for v in ray_only.values()):
        raise click.UsageError(f"{', '.join(k for k, v in ray_only.items() if v is not None)}: only with --ray")
    spec = workers.strip()
    ray_count = int(spec[4:]) if spec.startswith("ray:") and spec[4:].isdigit() else None
    if ray_count is not None:  # `ray:N`: N workers as Ray actors, started below once the plan says how many it uses
        addresses = [f"ray://worker-{i}" for i in range(ray_count)]
    else:
        addresses = [a.strip() if a.strip().lower().startswith("ray://") else parse_address(a)
                     for a in workers.split(",") if a.strip()]
    if tls_ca and any(isinstance(a, str) and a.lower().startswith("ray:") for a in addresses):
        raise click.UsageError("--tls-ca: Ray workers are reached through Ray, whose own TLS is RAY_USE_TLS")
    host, port = parse_address(listen, 8080)
    options = collect_scheme_options(extra_options, model=model, placement=placement, wire_dtype=wire_dtype,
                                     encode_precision=encode_precision, byzantine=byzantine, tolerance=tolerance,
                                     points=points)
    try:
        plan = build_plan(scheme, len(addresses), k, **options)
    except EdgeccError as e:
        raise click.UsageError(str(e)) from None
    addresses = addresses[: plan.N]  # uncoded (and the learned code) use the first of the workers given
    token = load_token(token_file)
    client_token = load_token(client_token_file) if client_token_file else None
    if client_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"edgecc serve: warning: listening on {host} without --client-token-file: anyone who can reach it can classify",
                   err=True)
    window = (DEFAULT_WINDOW_MS if window_ms is None else window_ms) / 1000
    if on_ray:
        if port == 0:
            raise click.UsageError("--listen: with --ray, Ray Serve's proxy needs a port of its own (not 0)")
        from pathlib import Path

        from ..serve import ray_app

        try:
            scaling = ray_app.Scaling(replicas=replicas, min_replicas=min_replicas,
                                      max_replicas=max_replicas, target_ongoing=target_ongoing,
                                      replica_cpus=1.0 if replica_cpus is None else replica_cpus,
                                      ingress_replicas=1 if ingress_replicas is None else ingress_replicas)
            tls_ca_pem = Path(tls_ca).read_text() if tls_ca else None
        except (EdgeccError, OSError) as e:
            raise click.UsageError(str(e)) from None
        config = ray_app.ServiceConfig(
            scheme, tuple(a if isinstance(a, str) else f"{a[0]}:{a[1]}" for a in addresses), token, k, options,
            window_s=window, max_queue=max_queue, max_groups=max_groups, max_in_flight=max_in_flight,
            max_images=max_images, request_timeout=request_timeout, wait=wait, drain_timeout=drain_timeout,
            client_token=client_token, tls_ca_pem=tls_ca_pem)
        try:
            drained = ray_app.run_until_signalled(config, scaling, host=host, port=port, name=app_name or "edgecc",
                                                  tls_cert=tls_cert, tls_key=tls_key,
                                                  ray_workers=len(addresses) if ray_count is not None else 0,
                                                  port_file=port_file, log_level=log_level,
                                                  announce=lambda t: click.echo(t, err=True))
        except EdgeccError as e:
            raise click.ClickException(str(e)) from None
        sys.exit(0 if drained else 1)

    async def go() -> bool:
        m = Master(plan, addresses[: plan.N], token, request_timeout=request_timeout,
                   ssl_context=client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None)
        try:
            await m.start(wait_ready=wait)
        except BaseException:
            await m.close()
            raise
        svc = Service(m, scheme, window_s=window, max_queue=max_queue,
                      max_groups=max_groups, max_in_flight=max_in_flight, max_images=max_images, client_token=client_token,
                      drain_timeout=drain_timeout)
        return await run_until_signalled(svc, host, port, server_ssl_context(tls_cert, tls_key) if tls_cert else None,
                                         port_file, announce=lambda t: click.echo(t, err=True))

    ray_workers = None
    if ray_count is not None:  # they end with this command (Ray ends a driver's actors with it)
        from ..launch.ray_workers import RayWorkers

        ray_workers = RayWorkers(len(addresses), token)
        try:
            addresses = ray_workers.start()
        except EdgeccError as e:
            raise click.ClickException(str(e)) from None
    try:
        drained = run(go())
    finally:
        if ray_workers is not None:
            ray_workers.stop()
    if not drained:
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
