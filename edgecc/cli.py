"""The `edgecc` command line: a thin layer of click commands over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .errors import EdgeccError

ARCH = click.Choice(["mlp", "cnn", "cl"])
RECIPES = ("paper", "best", "augment", "anneal")  # edgecc.train.RECIPES, spelled out so the CLI starts without torch
PRECISION = click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default="auto", show_default=True,
                         help="training arithmetic: auto = bf16 autocast where the device runs bf16 natively, else fp32")


def _arch(name: str) -> str:
    return "cl" if name in ("cnn", "cl") else "mlp"


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


@main.command()
@click.option("--kind", type=click.Choice(["aicc", "centralized-mlp", "centralized-cnn"]), default="aicc", show_default=True)
@click.option("--K", "K", type=int, default=2, show_default=True, help="images per group")
@click.option("--G", "G", type=int, default=1, show_default=True, help="encoder degree")
@click.option("--P", "P", type=int, default=1, show_default=True, help="H_S degree (1 for H_B)")
@click.option("--computation", type=click.Choice(["hb", "hs"]), default="hb", show_default=True)
@click.option("--encoder", type=ARCH, default="cnn", show_default=True, help="architecture of Γ_g")
@click.option("--compute", "compute_arch", type=ARCH, default="cnn", show_default=True, help="architecture of Λ_p / H_B")
@click.option("--recipe", type=click.Choice(RECIPES), default="paper", show_default=True,
              help="paper: SPEC §1; best: twice the epochs, warmup + cosine lr; augment: best + shifts and flips "
              "(edgecc.train.BEST); anneal: 10 more epochs of warmup + cosine from --init")
@click.option("--init", default=None, type=click.Path(dir_okay=False, exists=True),
              help="model file to start from (same kind and scheme; the anneal recipe needs one)")
@click.option("--epochs", type=int, default=None, help="[default: 20 (paper), 40 (best, augment), 10 (anneal)]")
@click.option("--batch", type=int, default=None, help="groups per step [default: 128 // K, the paper's 64 / 32]")
@click.option("--lr", type=float, default=None, help="Adam lr, the peak for best [default: 1e-3 (paper), 2e-3 (best)]")
@click.option("--seed", type=int, default=0, show_default=True)
@PRECISION
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads")
@click.option("--limit", type=int, default=None, help="train on the first LIMIT images only")
@click.option("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model file to write (.safetensors)")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False), help="checkpoint folder [default: OUT.run]")
@click.option("--resume", is_flag=True, help="continue from the last epoch checkpoint")
@click.option("--quiet", is_flag=True)
def train(kind, K, G, P, computation, encoder, compute_arch, recipe, init, epochs, batch, lr, seed, precision, device,
          threads, limit, data_dir, out, run_dir, resume, quiet):
    """Train a model by the paper's protocol and save it as one safetensors file."""
    from .coding.schemes import Scheme
    from .train import TrainConfig, train as run_training

    scheme = Scheme(K=K, G=G, P=P, computation=computation, encoder=_arch(encoder), compute_arch=_arch(compute_arch)) if kind == "aicc" else None
    cfg = TrainConfig.for_recipe(recipe, epochs=epochs, batch=batch, lr=lr, seed=seed, precision=precision, device=device,
                                 threads=threads, limit=limit, data_dir=data_dir, init=init)

    def progress(epoch: int, step: int, text: str) -> None:
        if quiet:
            return
        click.echo(f"\r{text}".ljust(100), nl=step == 0, err=True)  # step 0: an epoch's summary line

    info = run_training(kind, scheme, cfg, out, run_dir=run_dir, resume=resume, progress=progress)
    last = info["training"]["history"][-1]
    click.echo(json.dumps({"out": out, "epochs": len(info["training"]["history"]), "test_accuracy_direct": last["test_accuracy_direct"],
                           "test_precision": last.get("test_precision", "fp32"), "train_seconds": info["training"]["train_seconds"]}))


def _images(source: str, data_dir: str | None, limit: int | None):
    from .data import load_images

    images, labels = load_images(source, data_dir)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


@main.command("eval")
@click.argument("model", default="default")
@click.option("--N", "N", type=int, default=3, show_default=True, help="number of workers")
@click.option("--images", default="test", show_default=True, help="'test', 'train', 'sample' (shipped) or an .npz")
@click.option("--data-dir", default=None)
@click.option("--limit", type=int, default=None, help="first LIMIT images only")
@click.option("--max-subsets", type=int, default=200, show_default=True, help="sample this many R-subsets when there are more (the worst-conditioned is always included)")
@click.option("--encode-precision", type=click.Choice(["auto", "fp32", "bf16"]), default="fp32", show_default=True,
              help="the encoder's precision: fp32 (the reference results/ reports), bf16, or auto (what the master uses)")
@click.option("--wire-dtype", type=click.Choice(["f4", "f2"]), default="f4", show_default=True,
              help="round worker inputs and results as `edgecc master --wire-dtype` sends them")
@click.option("--points", type=click.Choice(["chosen", "uniform"]), default="chosen", show_default=True,
              help="evaluation points: chosen for N (the master's) or n/(N+1)")
@click.option("--tolerance", type=float, default=None, help="decoded-logit error bound a request may decode with "
              "[default: the master's, 0.01]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def eval_cmd(model, N, images, data_dir, limit, max_subsets, encode_precision, wire_dtype, points, tolerance, as_json):
    """Test accuracy of MODEL: D(β_k) directly, decoded from every R-subset of N workers, and decoded as the
    master decodes when the worst-conditioned R answer first; flags configurations the master refuses."""
    from .evaluate import evaluate, evaluate_centralized, evaluate_learned_code
    from .modelfile import load_model, resolve

    net, info = load_model(model)
    x, y = _images(images, data_dir, limit)
    if info["kind"] == "aicc":
        from .coding.conditioning import DEFAULT_TOLERANCE

        res = evaluate(net, info, x, y, N, max_subsets, encode_precision, wire_dtype, points,
                       DEFAULT_TOLERANCE if tolerance is None else tolerance)
    elif info["kind"] == "learned-code":
        res = evaluate_learned_code(net, info, x, y)
    else:
        res = evaluate_centralized(net, x, y)
    res = {"model": str(resolve(model)), "kind": info["kind"], **res}
    if as_json:
        click.echo(json.dumps(res))
        return
    refused = res.pop("refused", None)
    res.pop("alphas", None)
    for k, v in res.items():
        click.echo(f"{k:28s} {v:.3g}" if isinstance(v, float) and abs(v) < 0.01 else
                   f"{k:28s} {v:.2f}" if isinstance(v, float) else f"{k:28s} {v}")
    if refused:
        click.echo(f"REFUSED: the master would not start this configuration: {refused}", err=True)


@main.command()
@click.argument("model", default="default")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="bundle file to write")
@click.option("--placement", type=click.Choice(["encoded", "shared"]), default="encoded", show_default=True)
def export(model, out, placement):
    """Write what a worker needs for PLACEMENT as plain arrays with a checksum (H_B collapsed to one matrix)."""
    from .bundle import save_bundle
    from .export import bundle_info, worker_arrays
    from .modelfile import load_model

    net, info = load_model(model)
    if info["kind"] != "aicc":
        raise click.UsageError("only AICC models are distributed to workers")
    arrays = worker_arrays(net, info, placement)
    d = save_bundle(out, bundle_info(info, placement), arrays)
    click.echo(json.dumps({"out": out, "placement": placement, "sha256": d, "arrays": {k: list(v.shape) for k, v in arrays.items()}}))


def _limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout):
    from .runtime.limits import Limits

    return Limits(max_frame=max_frame, max_batch=max_batch, max_in_flight=max_in_flight,
                  handshake_timeout=handshake_timeout, idle_timeout=idle_timeout)


def limit_options(f):
    from .runtime.limits import Limits

    d = Limits()
    for opt in reversed([
        click.option("--max-frame", type=int, default=d.max_frame, show_default=True, help="bytes per frame"),
        click.option("--max-batch", type=int, default=d.max_batch, show_default=True, help="groups per request"),
        click.option("--max-in-flight", type=int, default=d.max_in_flight, show_default=True),
        click.option("--handshake-timeout", type=float, default=d.handshake_timeout, show_default=True),
        click.option("--idle-timeout", type=float, default=d.idle_timeout, show_default=True),
    ]):
        f = opt(f)
    return f


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s")


@main.command()
@click.option("--listen", default="127.0.0.1:7700", show_default=True, help="HOST:PORT (port 0 picks a free one)")
@click.option("--token-file", default=None, help="file holding the shared token [default: $EDGECC_TOKEN_FILE or $EDGECC_TOKEN]")
@click.option("--bundle", default=None, type=click.Path(dir_okay=False), help="preloaded worker bundle (edgecc export)")
@click.option("--tls-cert", default=None, help="certificate file (enables TLS)")
@click.option("--tls-key", default=None, help="private key file for --tls-cert")
@click.option("--data-dir", default=None, help="dataset folder for shared-dataset placement")
@click.option("--behaviour", default=None, help="JSON straggler behaviour (scenarios): latency/failure model")
@click.option("--seed", type=int, default=0, help="seed of the behaviour's delays")
@click.option("--index", type=int, default=0, help="this worker's index in the scenario (seeds its delays)")
@click.option("--port-file", default=None, help="write the bound port here once listening")
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port (same host as --listen; 0 picks one)")
@click.option("--lie", type=click.Choice(["random", "scale", "adversarial"]), default=None,
              help="TESTING ONLY: return wrong results (Byzantine worker)")
@click.option("--log-level", default="info", show_default=True)
@limit_options
def worker(listen, token_file, bundle, tls_cert, tls_key, data_dir, behaviour, seed, index, port_file, metrics_port, lie,
           log_level, max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout):
    """Serve computations for a master (needs no torch for the encoded-only placement)."""
    import os

    # A worker's matmuls are small: BLAS threads only fight other processes for the cores (measured
    # 34x slower per group with 2 OpenBLAS threads on a loaded 2-core host). Must precede numpy's import.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import asyncio

    from .protocol.auth import load_token
    from .runtime.transport import parse_address, run, server_ssl_context
    from .runtime.worker import Worker

    _logging(log_level)
    host, port = parse_address(listen)
    loaded = None
    if bundle:
        from .bundle import load_bundle

        loaded = load_bundle(bundle)
    beh = None
    if behaviour:
        from .scenario.latency import WorkerBehaviour

        beh = WorkerBehaviour.from_dict(json.loads(behaviour), seed, index).delay
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    w = Worker(load_token(token_file), _limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout),
               loaded, beh, data_dir, server_ssl_context(tls_cert, tls_key) if tls_cert else None, name=f"worker {index}", lie=lie)
    if metrics_port is not None:
        from .runtime.worker_metrics import start_metrics_server

        _, mport = start_metrics_server(w, host, metrics_port)
        click.echo(f"edgecc worker metrics on http://{host}:{mport}/metrics", err=True)

    async def serve() -> None:
        bound = await w.start(host, port)
        if port_file:
            from pathlib import Path

            Path(port_file).write_text(str(bound))
        click.echo(f"edgecc worker listening on {host}:{bound}", err=True)
        try:
            await w.serve_forever()
        except asyncio.CancelledError:
            pass
        finally:
            await w.close()

    try:
        run(serve())
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--workers", required=True, help="comma-separated HOST:PORT of the N workers, in α order")
@click.option("--model", default="default", show_default=True, help="model file, or 'default' (shipped)")
@click.option("--images", default="sample", show_default=True, help="'sample' (shipped), 'test', 'train' or an .npz")
@click.option("--data-dir", default=None)
@click.option("--limit", type=int, default=None, help="first LIMIT images only")
@click.option("--placement", type=click.Choice(["encoded", "shared"]), default="encoded", show_default=True)
@click.option("--worker-dataset", default=None, help="shared placement: name of the dataset the workers hold ('sample', 'test'); the master then sends indices... (images are sent when unset)")
@click.option("--groups-per-request", type=int, default=64, show_default=True)
@click.option("--in-flight", type=int, default=8, show_default=True, help="requests in flight")
@click.option("--timeout", "request_timeout", type=float, default=10.0, show_default=True, help="per-request deadline (s)")
@click.option("--wait", type=float, default=10.0, show_default=True, help="seconds to wait for R workers at start")
@click.option("--wire-dtype", type=click.Choice(["f4", "f2"]), default="f4", show_default=True)
@click.option("--byzantine", type=int, default=0, show_default=True, help="E: wait for R+2E results, decode around up to E lying workers and name them")
@click.option("--encode-precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="encoder precision at the master; auto = bf16 for CNN encoders on CPUs with native bf16, else fp32")
@click.option("--scheme", type=click.Choice(["auto", "approxifer"]), default="auto", show_default=True,
              help="auto: the model's own scheme (AICC, learned code); approxifer: Berrut-coded ApproxIFER over a "
              "centralized model (--model default-mlp, or a centralized CNN with torch on the workers), K = --k")
@click.option("--k", "approx_k", type=int, default=2, show_default=True, help="approxifer: images per group")
@click.option("--points", type=click.Choice(["n", "n-1"]), default="n", show_default=True,
              help="approxifer: worker nodes cos(iπ/N) or cos(iπ/(N−1))")
@click.option("--token-file", default=None)
@click.option("--tls-ca", default=None, help="CA file: connect with TLS and verify workers against it")
@click.option("--json-out", default=None, type=click.Path(dir_okay=False), help="write the JSON summary here")
@click.option("--predictions-out", default=None, type=click.Path(dir_okay=False), help="write predictions (.npy, -1 = failed)")
@click.option("--quiet", is_flag=True)
@click.option("--log-level", default="warning", show_default=True)
@limit_options
def master(workers, model, images, data_dir, limit, placement, worker_dataset, groups_per_request, in_flight, request_timeout,
           wait, wire_dtype, byzantine, encode_precision, scheme, approx_k, points, token_file, tls_ca, json_out,
           predictions_out, quiet, log_level, max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout):
    """Stream images through N workers, decoding each request from the first R answers."""
    import numpy as np

    from .modelfile import load_model
    from .protocol.auth import load_token
    from .runtime.master import Master, run_stream
    from .runtime.plan import CodedPlan, LearnedCodePlan
    from .runtime.transport import client_ssl_context, parse_address, run

    _logging(log_level)
    addresses = [parse_address(a) for a in workers.split(",") if a.strip()]
    net, info = load_model(model)
    if scheme == "approxifer":  # any K of the N workers, each running the centralized model on a Berrut combination
        from .runtime.approxifer import ApproxIFERPlan

        if placement != "encoded":
            raise click.UsageError("ApproxIFER's workers run the centralized model on what the master sends: no --placement")
        try:
            plan = ApproxIFERPlan(net, info, approx_k, len(addresses), points, wire_dtype, byzantine)
        except EdgeccError as e:
            raise click.UsageError(str(e)) from None
    elif info["kind"] == "learned-code":  # the baseline [10]: k data workers + 1 parity worker, all plain
        if len(addresses) != info["code"]["k"] + 1 or byzantine or placement != "encoded":
            raise click.UsageError(f"a learned-code model runs on exactly k+1 = {info['code']['k'] + 1} workers, "
                                   "without --byzantine or --placement")
        plan = LearnedCodePlan(net, info, wire_dtype)
    elif info["kind"] == "aicc":
        plan = CodedPlan(net, info, len(addresses), placement, wire_dtype, byzantine, encode_precision)
    else:
        raise click.UsageError(f"the master distributes AICC or learned-code models, not {info['kind']!r} (a centralized model: --scheme approxifer)")
    x, y = _images(images, data_dir, limit)
    token = load_token(token_file)
    limits = _limits(max_frame, max_batch, max_in_flight, handshake_timeout, idle_timeout)

    async def go():
        m = Master(plan, addresses, token, limits=limits, request_timeout=request_timeout,
                   ssl_context=client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None)
        try:
            await m.start(wait_ready=wait)
            await m.wait_all_ready(min(wait, 2.0))
            if quiet:
                return await run_stream(m, x, y, groups_per_request, in_flight)
            with click.progressbar(length=x.shape[0] - x.shape[0] % plan.K, label="images", file=click.get_text_stream("stderr")) as bar:
                return await run_stream(m, x, y, groups_per_request, in_flight, progress=bar.update)
        finally:
            await m.close()

    summary, preds = run(go())
    summary["model"] = model
    if json_out:
        from .modelfile import atomic_write

        atomic_write(json_out, json.dumps(summary, indent=2).encode())
    if predictions_out:
        np.save(predictions_out, preds)
    click.echo(json.dumps(summary))
    if summary["requests_failed"]:
        sys.exit(1)


@main.command()
@click.argument("address")
@click.option("--token-file", default=None)
@click.option("--tls-ca", default=None)
@click.option("--timeout", type=float, default=5.0, show_default=True)
def ping(address, token_file, tls_ca, timeout):
    """Check that a worker answers the authenticated handshake (exit 0 on success)."""
    from .protocol.auth import load_token
    from .runtime.probe import probe
    from .runtime.transport import client_ssl_context, parse_address, run

    host, port = parse_address(address)
    ctx = client_ssl_context(tls_ca, insecure_hostname=True) if tls_ca else None
    info = run(probe(host, port, load_token(token_file), timeout, ctx))
    click.echo(json.dumps(info))


@main.command()
@click.option("--workers", required=True, help="comma-separated HOST:PORT of the N workers, in α order")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT for HTTP (port 0 picks a free one)")
@click.option("--model", default="default", show_default=True, help="AICC model file, or 'default' (shipped); sets K")
@click.option("--scheme", type=click.Choice(["aicc", "uncoded", "replication"]), default="aicc", show_default=True,
              help="uncoded and replication run the shipped centralized MLP on K or N workers (comparators)")
@click.option("--window-ms", type=float, default=None, help="batching window: longest an image waits for K-1 others "
              "[default: edgecc.serve.app.DEFAULT_WINDOW_MS, from results/serve-sweep.md]")
@click.option("--max-queue", type=int, default=1024, show_default=True, help="images waiting; beyond it: 503 + Retry-After")
@click.option("--max-groups", type=int, default=8, show_default=True, help="groups of K sent to the workers as one request")
@click.option("--max-in-flight", type=int, default=32, show_default=True, help="requests at the workers at once")
@click.option("--max-images", type=int, default=64, show_default=True, help="images per HTTP request")
@click.option("--timeout", "request_timeout", type=float, default=10.0, show_default=True, help="seconds a worker request may take")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True, help="seconds to finish accepted requests on SIGTERM")
@click.option("--wait", type=float, default=10.0, show_default=True, help="seconds to wait for R workers at start")
@click.option("--encode-precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True)
@click.option("--token-file", default=None, help="the workers' shared token [default: $EDGECC_TOKEN_FILE or $EDGECC_TOKEN]")
@click.option("--tls-ca", default=None, help="CA file: connect to workers with TLS and verify them against it")
@click.option("--client-token-file", default=None, help="file holding the bearer token clients must send (default: none required)")
@click.option("--tls-cert", default=None, help="certificate file: serve HTTPS")
@click.option("--tls-key", default=None, help="private key file for --tls-cert")
@click.option("--port-file", default=None, help="write the bound port here once listening")
@click.option("--log-level", default="warning", show_default=True)
def serve(workers, listen, model, scheme, window_ms, max_queue, max_groups, max_in_flight, max_images, request_timeout,
          drain_timeout, wait, encode_precision, token_file, tls_ca, client_token_file, tls_cert, tls_key, port_file, log_level):
    """Classify images over HTTP: POST /v1/classify, dashboard at /, Prometheus at /metrics."""
    from .protocol.auth import load_token
    from .runtime.master import Master
    from .runtime.transport import client_ssl_context, parse_address, run, server_ssl_context
    from .serve.app import DEFAULT_WINDOW_MS, Service, build_plan, run_until_signalled

    _logging(log_level)
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    addresses = [parse_address(a) for a in workers.split(",") if a.strip()]
    host, port = parse_address(listen, 8080)
    plan = build_plan(scheme, model, len(addresses), encode_precision)
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

    from .protocol.auth import load_token
    from .runtime.transport import run
    from .serve.load import run_load

    token = load_token(client_token_file).decode() if client_token_file else None
    ctx = ssl_mod.create_default_context(cafile=tls_ca) if tls_ca else None
    try:
        summary = run(run_load(url, rate, duration, images_per_request=images_per_request, fmt=fmt, token=token,
                               deadline_ms=deadline_ms, warmup=warmup, seed=seed, ssl=ctx))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    summary["url"] = url
    if json_out:
        from .modelfile import atomic_write

        atomic_write(json_out, json.dumps(summary, indent=2).encode())
    click.echo(json.dumps(summary))


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


class _ReproduceGroup(click.Group):
    """`edgecc reproduce` took its actions as flags; those flags now name the subcommand to use instead."""

    MOVED = {"--check": "check", "--estimate": "estimate", "--status": "status", "--readme": "render"}

    def parse_args(self, ctx, args):
        if args and args[0].startswith("--") and args[0] != "--help":
            sub, rest = "run", list(args)
            for flag, name in self.MOVED.items():
                if flag in rest:
                    i = rest.index(flag)
                    sub, rest = name, rest[:i] + rest[i + 1:]
                    if name == "render" and i < len(rest):  # --readme FILE: FILE is render's argument
                        sub = f"render {rest.pop(i)}"
                    break
            raise click.UsageError(f"the actions of `edgecc reproduce` are subcommands: `edgecc reproduce {sub} "
                                   f"{' '.join(rest)}` (subcommands: {', '.join(self.commands)})", ctx)
        return super().parse_args(ctx, args)


@main.group(cls=_ReproduceGroup)
def reproduce() -> None:
    """The paper's Tables 2 and 3: train each cell (resumable per cell and epoch), check, estimate, render."""


def _table(f):
    return click.option("--table", type=click.Choice(["2", "3"]), required=True, help="the paper's table")(f)


def _only(f):
    return click.option("--only", multiple=True, help="cell name(s) (default: every cell of the table)")(f)


def _recipe(f):
    return click.option("--recipe", type=click.Choice(RECIPES), default="paper", show_default=True,
                        help="an improved recipe has its own results/table{2,3}-RECIPE.json, its own column "
                        "(anneal continues the cell's committed paper-protocol model)")(f)


def _training(f):
    for opt in reversed([
        click.option("--epochs", type=int, default=None, help="[default: 20 (paper), 40 (best, augment), 10 (anneal)]"),
        click.option("--seed", type=int, default=0, show_default=True),
        PRECISION,
        click.option("--device", default="cpu", show_default=True, help="cpu or cuda"),
        click.option("--threads", type=int, default=None, help="torch CPU threads"),
        click.option("--limit", type=int, default=None,
                     help="train on the first LIMIT images only (smoke runs; rows record train_images)"),
    ]):
        f = opt(f)
    return f


_RESULTS_DIR = click.option("--results-dir", default="results", show_default=True)
_RUNS_DIR = click.option("--runs-dir", default="runs/reproduce", show_default=True, help="per-epoch checkpoints (resumable)")


def _config(recipe, epochs, seed, precision, device, threads, limit):
    from .train import TrainConfig

    return TrainConfig.for_recipe(recipe, epochs=epochs, seed=seed, precision=precision, device=device, threads=threads,
                                  limit=limit)


@reproduce.command("run")
@_table
@_only
@_recipe
@_training
@_RESULTS_DIR
@_RUNS_DIR
def reproduce_run(table, only, recipe, epochs, seed, precision, device, threads, limit, results_dir, runs_dir):
    """Train and evaluate cells (resumable); rows merge into results/ as each cell finishes, then print the table."""
    from .reproduce import render_markdown, reproduce as run_cells

    def progress(cell, text):
        click.echo(f"\r[{cell}] {text}".ljust(110), nl=not text.startswith("epoch") or "done" in text, err=True)

    cfg = _config(recipe, epochs, seed, precision, device, threads, limit)
    run_cells(int(table), list(only) or None, cfg, results_dir, runs_dir, progress)
    click.echo(render_markdown(int(table), results_dir))


@reproduce.command("check")
@_table
@_only
@_recipe
@_RESULTS_DIR
def reproduce_check(table, only, recipe, results_dir):
    """Re-evaluate committed checkpoints against their rows (±0.05); exit 1 on a mismatch. Trains nothing."""
    from .reproduce import check

    rows = check(int(table), results_dir, list(only) or None, recipe)
    for r in rows:
        click.echo(f"{r['cell']:20s} recorded {r['recorded']:.2f} measured {r['measured']:.2f} {'ok' if r['ok'] else 'MISMATCH'}")
    if not all(r["ok"] for r in rows):
        sys.exit(1)


@reproduce.command("estimate")
@_table
@_only
@_recipe
@_training
def reproduce_estimate(table, only, recipe, epochs, seed, precision, device, threads, limit):
    """Time a few training steps of each cell on this device; print what each run would take. Trains nothing."""
    from .reproduce import estimate

    cfg = _config(recipe, epochs, seed, precision, device, threads, limit)
    rows = estimate(int(table), list(only) or None, cfg)
    click.echo(f"training steps only (median of 3 after a warm-up), {device}, {rows[0]['threads']} thread(s), {cfg.precision}, "
               f"{cfg.epochs} epochs; an epoch's test pass is extra")
    for r in rows:
        click.echo(f"{r['cell']:20s} batch {r['batch']:3d}  step {1e3 * r['step_seconds']:8.1f} ms  "
                   f"epoch {r['epoch_seconds'] / 60:7.2f} min  run {r['run_seconds'] / 3600:6.2f} h")
    click.echo(f"{'all':20s} {'':40s} run {sum(r['run_seconds'] for r in rows) / 3600:6.2f} h")


@reproduce.command("status")
@_table
@_recipe
@_RESULTS_DIR
@_RUNS_DIR
def reproduce_status(table, recipe, results_dir, runs_dir):
    """Which cells have rows, which are partly trained in --runs-dir (epochs, time left), which not started."""
    from .reproduce import status

    span = lambda m: f"{m:.0f} min" if m >= 1 else f"{60 * m:.0f} s"
    for r in status(int(table), recipe, results_dir, runs_dir):
        if r["state"] == "done":
            what = (f"done     {r['accuracy']:6.2f} ({r['delta']:+.2f} vs {r['paper']}), {r['epochs']} epochs; "
                    f"this recipe's training took {span(r['minutes'])}")
        elif r["state"] == "partial":
            what = (f"partial  epoch {r['epochs']}/{r['of']}, test accuracy {r['last_accuracy']:.2f}, {span(r['minutes'])} of "
                    f"training so far, about {span(r['minutes_left'])} left at this pace (test passes not counted)")
        else:
            what = "not started"
        click.echo(f"{r['cell']:20s} {what}")


@reproduce.command("render")
@click.argument("file", default="docs/results.md", type=click.Path(exists=True, dir_okay=False))
@click.option("--table", "tables", type=click.Choice(["2", "3"]), multiple=True,
              help="only this table (default: every table whose marker line FILE has)")
@_RESULTS_DIR
def reproduce_render(file, tables, results_dir):
    """Re-render Tables 2 and 3 from results/ under their marker lines in FILE (docs/results.md)."""
    from .reproduce import render_into

    try:
        changed = render_into(file, [int(t) for t in tables] or None, results_dir)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for table, c in changed.items():
        click.echo(f"{file}: table {table} {'re-rendered' if c else 'already matches ' + results_dir}")


@main.command()
@click.option("--quick", is_flag=True, help="fewer repeats and smaller sizes (~2 min)")
@click.option("--out", default="results/bench.json", show_default=True, help="raw results; the tables go next to it as .md")
def bench(quick, out):
    """Measure training throughput, master/worker cost, runtime overhead, latency and memory."""
    from .bench import main as run_bench, render_markdown
    from .modelfile import atomic_write

    result = run_bench(quick=quick, out=out)
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
    import signal
    from pathlib import Path

    from .scenario.runner import run_scenario
    from .scenario.spec import load_scenario

    # SIGTERM unwinds like Ctrl-C, so workers stop and link namespaces are removed (finally blocks run)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
    import signal
    from pathlib import Path

    from .scenario.spec import load_scenario
    from .scenario.sweep import run_sweep

    signal.signal(signal.SIGTERM, signal.default_int_handler)
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


@main.command()
@click.option("--images", default="test", show_default=True, help="'test' (10,000 images), 'sample' or an .npz")
@click.option("--limit", type=int, default=None, help="first LIMIT images only (smoke runs; the table records the count)")
@click.option("--only", multiple=True, help="cell id prefix(es) to run, e.g. approxifer-cnn-K8 (default: every cell)")
@click.option("--points", type=click.Choice(["n", "n-1"]), default="n", show_default=True,
              help="ApproxIFER worker point set the table's main column shows: cos(iπ/N) or cos(iπ/(N−1))")
@click.option("--runs-dir", default="runs/schemes", show_default=True, help="one JSON per finished cell (resumable)")
@click.option("--results-dir", default="results", show_default=True)
@click.option("--cached-only", is_flag=True, help="compute nothing: write the table from the cells already in --runs-dir")
def compare(images, limit, only, points, runs_dir, results_dir, cached_only):
    """ApproxIFER, AICC, the learned code, replication and uncoded side by side: writes results/schemes.{json,md}."""
    from . import schemes_table as st

    rows = st.run(runs_dir, images, limit, tuple(only), log=lambda m: click.echo(m, err=True), cached_only=cached_only)
    measured = st.measured_worker_seconds(st.base_computes())
    table = st.assemble(rows, measured, max((r["images"] for r in rows), default=0))
    table["main_points"] = points
    j, m = st.write(table, results_dir)
    click.echo(st.markdown(table, points))
    click.echo(f"wrote {j} and {m}", err=True)


if __name__ == "__main__":
    main()
