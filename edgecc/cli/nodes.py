"""Commands that run nodes: worker, master, ping, token."""

from __future__ import annotations

import json
import sys

import click

from ..errors import EdgeccError
from .group import main
from .options import SchemeName, collect_scheme_options, images_from, limit_options, make_limits, scheme_options, setup_logging


@main.command()
@click.option("--listen", default="127.0.0.1:7700", show_default=True, help="[tcp://|tls://]HOST:PORT to listen on (port 0 picks a free one; tls with --tls-cert)")
@click.option("--token-file", default=None, help="file holding the shared token [default: $EDGECC_TOKEN_FILE or $EDGECC_TOKEN]")
@click.option("--bundle", default=None, type=click.Path(dir_okay=False), help="preloaded worker bundle (edgecc export)")
@click.option("--tls-cert", default=None, help="certificate file (enables TLS)")
@click.option("--tls-key", default=None, help="private key file for --tls-cert")
@click.option("--data-dir", default=None, help="dataset folder for shared-dataset placement")
@click.option("--dataset", "dataset_source", default=None, metavar="SOURCE",
              help="hold these images for the shared placement (any edgecc.datasets source: sample, test, train, "
              "idx:DIR, cifar10:DIR, folder:DIR, npz:FILE, with ?size=HxW&channels=C); the worker announces it "
              "(count, shape, SHA-256) and masters then send indices instead of pixels")
@click.option("--base", "base_spec", default=None, metavar="MODULE:CALLABLE",
              help="run this operator's own base model for the model-agnostic schemes (uncoded, replication, "
              "approxifer with --model worker): a callable on the PYTHONPATH returning a torch.nn.Module, "
              "?shape=HxW or ?shape=3xHxW for its input; announced by name, shape, classes and weights' SHA-256")
@click.option("--behaviour", default=None, help="JSON straggler behaviour (scenarios): latency/failure model")
@click.option("--seed", type=int, default=0, help="seed of the behaviour's delays")
@click.option("--index", type=int, default=0, help="this worker's index in the scenario (seeds its delays)")
@click.option("--port-file", default=None, help="write the bound port here once listening")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (same host as --listen; 0 picks one)")
@click.option("--lie", type=click.Choice(["random", "scale", "adversarial"]), default=None,
              help="TESTING ONLY: return wrong results (Byzantine worker)")
@click.option("--exit-with-parent", is_flag=True,
              help="exit when the process that started this worker exits (edgecc's local launchers set it)")
@click.option("--log-level", default="info", show_default=True)
@limit_options
def worker(listen, token_file, bundle, tls_cert, tls_key, data_dir, dataset_source, base_spec, behaviour, seed, index, port_file, metrics_port, lie,
           exit_with_parent, log_level, max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout):
    """Serve computations for a master (needs no torch for the encoded-only placement)."""
    import os

    # A worker's matmuls are small: BLAS threads only fight other processes for the cores (measured
    # 34x slower per group with 2 OpenBLAS threads on a loaded 2-core host). Must precede numpy's import.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import asyncio

    from ..protocol.auth import load_token
    from ..comm import AddressError, split_address
    from ..comm.addressing import parse_host_port
    from ..comm.tcp import server_ssl_context
    from ..process import run
    from ..worker.server import Worker

    setup_logging(log_level)
    tls = server_ssl_context(tls_cert, tls_key) if tls_cert and tls_key else None
    try:
        scheme, location = split_address(listen, "tls" if tls else "tcp")
        if scheme == "mem":
            raise AddressError(f"{listen!r}: mem:// is reachable only inside one process; a worker process "
                               "listens on tcp://HOST:PORT or tls://HOST:PORT")
        host, port = parse_host_port(location) if scheme in ("tcp", "tls") else (None, None)
    except AddressError as e:
        raise click.UsageError(str(e)) from None
    loaded = None
    if bundle:
        from ..bundle import load_bundle

        loaded = load_bundle(bundle)
    faults = None
    if behaviour or lie:
        from ..worker.faults import Faults

        delay = None
        if behaviour:
            from ..scenario.latency import WorkerBehaviour

            delay = WorkerBehaviour.from_dict(json.loads(behaviour), seed, index).delay
        faults = Faults(delay=delay, lie=lie)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    held = None
    if dataset_source:
        from ..worker.server import HeldDataset, torch_available

        try:
            held = HeldDataset.load(dataset_source, data_dir)
        except EdgeccError as e:
            raise click.UsageError(f"--dataset: {e}") from None
        click.echo(f"edgecc worker holds dataset {held.describe()}", err=True)
        if not torch_available():
            click.echo("edgecc worker: warning: --dataset serves the shared placement, which needs torch "
                       "(pip install 'edgecc[ml]')", err=True)
    base = None
    if base_spec:
        from ..worker.user_base import UserBase

        try:
            base = UserBase.load(base_spec)
        except EdgeccError as e:
            raise click.UsageError(str(e)) from None
        click.echo(f"edgecc worker runs base {base.describe()}", err=True)
    w = Worker(load_token(token_file), make_limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout),
               loaded, faults, data_dir, tls, name=f"worker {index}", dataset=held, base=base)
    if metrics_port is not None:
        if host is None:
            raise click.UsageError(f"--metrics-port serves HTTP beside a TCP worker, not at {listen!r}")
        from ..worker.metrics import start_metrics_server

        _, mport = start_metrics_server(w, host, metrics_port)
        click.echo(f"edgecc worker metrics on http://{host}:{mport}/metrics", err=True)

    async def serve() -> None:
        watcher = None
        if exit_with_parent:
            from ..launch.local import watch_parent

            me = asyncio.current_task()

            def orphaned() -> None:
                click.echo("edgecc worker: the process that started it has exited; stopping", err=True)
                me.cancel()

            watcher = asyncio.create_task(watch_parent(orphaned))  # held here: the loop keeps tasks weakly
        try:
            try:
                bound = await w.start(listen)
            except AddressError as e:
                raise click.UsageError(str(e)) from None
            if port_file:  # local launchers (launch/local.py) read the port the worker was given
                from pathlib import Path

                Path(port_file).write_text(bound.rsplit(":", 1)[-1])
            click.echo(f"edgecc worker listening on {bound}", err=True)
            await w.serve_forever()
        except asyncio.CancelledError:
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            await w.close()

    try:
        run(serve())
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--workers", default="", help="comma-separated addresses of the N workers, in α order: "
              "HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT, ray://NAME (a Ray actor) or ray:N (N Ray "
              "actors started here, docs/ray.md) (none for a scheme without workers, e.g. local)")
@click.option("--scheme", type=SchemeName("auto"), default="auto", show_default=True,
              help="auto: the one scheme that runs --model's kind ('default', the AICC model, when no --model); "
              "`edgecc schemes` lists every scheme and its options")
@scheme_options
@click.option("--images", default="sample", show_default=True,
              help="image source, read in the model's image shape: 'sample' (shipped), 'test', 'train', an .npz, "
              "cifar10:DIR or any source of edgecc.datasets")
@click.option("--data-dir", default=None)
@click.option("--limit", type=int, default=None, help="first LIMIT images only")
@click.option("--indices", is_flag=True,
              help="send the images' indices instead of their pixels (Remark 1's shared dataset): aicc with "
              "--placement shared, every worker started with `edgecc worker --dataset` naming the same images as "
              "--images (checked at handshake by the SHA-256 of all of them)")
@click.option("--groups-per-request", type=int, default=64, show_default=True)
@click.option("--in-flight", type=int, default=8, show_default=True, help="requests in flight")
@click.option("--timeout", "request_timeout", type=float, default=10.0, show_default=True, help="per-request deadline (s)")
@click.option("--wait", type=float, default=10.0, show_default=True, help="seconds to wait for R workers at start")
@click.option("--token-file", default=None)
@click.option("--tls-ca", default=None, help="CA file: connect with TLS and verify workers against it")
@click.option("--json-out", default=None, type=click.Path(dir_okay=False), help="write the JSON summary here")
@click.option("--predictions-out", default=None, type=click.Path(dir_okay=False), help="write predictions (.npy, -1 = failed)")
@click.option("--quiet", is_flag=True)
@click.option("--log-level", default="warning", show_default=True)
@limit_options
def master(workers, scheme, k, model, placement, wire_dtype, encode_precision, byzantine, tolerance, points,
           extra_options, images, data_dir, limit, indices, groups_per_request, in_flight, request_timeout, wait, token_file,
           tls_ca, json_out, predictions_out, quiet, log_level, max_frame, max_batch, max_in_flight, handshake_timeout,
           idle_timeout):
    """Stream images through N workers, decoding each request from the first R answers."""
    import numpy as np

    from ..protocol.auth import load_token
    from ..master.master import Master
    from ..master.stream import run_stream
    from ..schemes.registry import build_plan, check_options, scheme_for_model
    from ..comm import AddressError
    from ..comm.registry import backend_for
    from ..comm.tcp import client_ssl_context
    from ..process import run

    setup_logging(log_level)
    addresses = [a.strip() for a in workers.split(",") if a.strip()]
    spec = workers.strip()
    ray_count = int(spec[4:]) if spec.startswith("ray:") and spec[4:].isdigit() else None
    if ray_count is not None:  # `ray:N`: N workers as Ray actors, started below once the plan says how many it uses
        addresses = [f"ray://worker-{i}" for i in range(ray_count)]
    if tls_ca and any(a.lower().startswith("ray:") for a in addresses):
        raise click.UsageError("--tls-ca: Ray workers are reached through Ray, whose own TLS is RAY_USE_TLS")
    ssl_context = client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None
    try:
        for a in addresses:
            backend_for(a, ssl_context)
    except AddressError as e:
        raise click.UsageError(f"--workers: {e}") from None
    options = collect_scheme_options(extra_options, model=model, placement=placement, wire_dtype=wire_dtype,
                                     encode_precision=encode_precision, byzantine=byzantine, tolerance=tolerance,
                                     points=points)
    try:
        if scheme == "auto":  # the one scheme that runs the model's kind
            from ..modelfile import read_header

            options.setdefault("model", "default")
            if str(options["model"]).partition("?")[0] == "worker":
                raise EdgeccError("--model worker (the workers' own base) runs with uncoded, replication or "
                                  "approxifer: name one with --scheme")
            scheme = scheme_for_model(read_header(options["model"])["kind"])
        plan = build_plan(scheme, len(addresses), k, **options)
    except EdgeccError as e:
        raise click.UsageError(str(e)) from None
    addresses = addresses[: plan.N]  # uncoded (and the learned code) use the first of the workers given
    if indices and plan.placement != "shared":
        raise click.UsageError(f"--indices: only the shared placement sends dataset indices (--scheme aicc "
                               f"--placement shared, its workers holding the images); this {plan.name} plan's "
                               f"placement is {plan.placement!r}")
    if indices and any(a.lower().startswith("ray:") for a in addresses):
        raise click.UsageError("--indices: Ray workers hold no dataset; start `edgecc worker --dataset SOURCE` "
                               "workers and give their addresses")
    from ..schemes.base import plan_shape

    # in the shape the plan's model takes; with --indices, the workers' dataset is the whole set, before --limit
    x, y = images_from(images, data_dir, None if indices else limit, image=plan_shape(plan)[0])
    dataset = None
    if indices:
        from ..protocol.messages import dataset_digest

        dataset = dataset_digest(np.ascontiguousarray(x))  # what each worker must announce in its hello
        x, y = (x[:limit], y[:limit]) if limit else (x, y)
    token = load_token(token_file)
    limits = make_limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout)

    async def go():
        m = Master(plan, addresses, token, limits=limits, request_timeout=request_timeout, ssl_context=ssl_context,
                   dataset=dataset)
        try:
            await m.start(wait_ready=wait)
            await m.wait_all_ready(min(wait, 2.0))
            if quiet:
                return await run_stream(m, x, y, groups_per_request, in_flight, indices=indices)
            with click.progressbar(length=x.shape[0] - x.shape[0] % plan.K, label="images", file=click.get_text_stream("stderr")) as bar:
                return await run_stream(m, x, y, groups_per_request, in_flight, progress=bar.update, indices=indices)
        finally:
            await m.close()

    ray_workers = None
    if ray_count is not None:  # they end with this command (Ray ends a driver's actors with it)
        from ..launch.ray_workers import RayWorkers

        ray_workers = RayWorkers(len(addresses), token, limits=limits)
        try:
            addresses = ray_workers.start()
        except EdgeccError as e:
            raise click.ClickException(str(e)) from None
    try:
        summary, preds = run(go())
    finally:
        if ray_workers is not None:
            ray_workers.stop()
    summary["options"] = check_options(scheme, options)  # what the scheme ran with, defaults included
    if json_out:
        from ..modelfile import atomic_write

        atomic_write(json_out, json.dumps(summary, indent=2).encode())
    if predictions_out:
        np.save(predictions_out, preds)
    click.echo(json.dumps(summary))
    if summary["requests_failed"]:
        sys.exit(1)


@main.command()
def schemes():
    """List the schemes (built-in, registered, and those other packages declare) with their options."""
    from ..schemes.registry import DEFAULT_SCHEMES, get, names

    for name in names():
        try:
            s = get(name)
        except EdgeccError as e:
            click.echo(f"{name}: cannot be loaded: {e}\n")
            continue
        click.echo(f"{name}{' (default)' if name in DEFAULT_SCHEMES else ''}: {s.summary}")
        for o in s.options:
            shown = "" if o.model or not o.choices else f" [{'|'.join(map(str, o.choices))}]"
            click.echo(f"  {o.name} = {o.default!r}{shown}: {o.help}")
        click.echo("")


@main.command()
@click.argument("address")
@click.option("--token-file", default=None)
@click.option("--tls-ca", default=None)
@click.option("--timeout", type=float, default=5.0, show_default=True)
def ping(address, token_file, tls_ca, timeout):
    """Check that a worker answers the authenticated handshake (exit 0 on success)."""
    from ..protocol.auth import load_token
    from ..master.probe import probe
    from ..comm import AddressError
    from ..comm.tcp import client_ssl_context
    from ..process import run

    ctx = client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None
    try:
        info = run(probe(address, load_token(token_file), timeout, ctx))
    except AddressError as e:
        raise click.UsageError(str(e)) from None
    click.echo(json.dumps(info))


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="file to write the token to (mode 0600)")
def token(out):
    """Generate a random shared token into a file readable only by its owner."""
    import os
    import secrets

    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    click.echo(f"wrote a new token to {out}", err=True)
