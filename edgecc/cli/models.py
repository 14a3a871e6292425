"""Commands on models: train, snapshot (a run in training as a model file), eval, export, reproduce (the paper's
tables), compare (schemes side by side)."""

from __future__ import annotations

import json
import sys

import click

from .group import main
from .options import ARCH, COMPILE, PRECISION, RECIPES, WEIGHT_INITS, arch_family, images_from


@main.command()
@click.option("--kind", type=click.Choice(["aicc", "centralized-mlp", "centralized-cnn", "centralized-resnet18"]), default="aicc",
              show_default=True)
@click.option("--K", "K", type=int, default=2, show_default=True, help="images per group")
@click.option("--G", "G", type=int, default=1, show_default=True, help="encoder degree")
@click.option("--P", "P", type=int, default=1, show_default=True, help="H_S degree (1 for H_B)")
@click.option("--computation", type=click.Choice(["hb", "hs"]), default="hb", show_default=True)
@click.option("--encoder", type=ARCH, default="cnn", show_default=True, help="architecture of Γ_g")
@click.option("--compute", "compute_arch", type=ARCH, default="cnn", show_default=True, help="architecture of Λ_p / H_B")
@click.option("--coef-width", type=click.IntRange(min=1), default=None,
              help="channels of the CNN coefficient networks Γ and Λ, beyond the paper [default: 20·K]; with --init "
              "a narrower model of the same scheme is widened, computing what it did (edgecc.nets.widen)")
@click.option("--maps", type=click.IntRange(min=1, max=64), default=None,
              help="maps H_S forms from each encoded input, beyond the paper [default: 1]: each Λ_p gives that many and "
              "the affine Ω reads them all (R unchanged); with --init a model of fewer maps is widened, computing what it did")
@click.option("--points", type=click.Choice(["paper", "chebyshev"]), default="paper", show_default=True,
              help="where the model's polynomials are read: paper, β_k = k/K (the master places the workers); "
              "chebyshev, beyond the paper: β_k the K Chebyshev nodes and α_n = cos(nπ/(N−1)), all in [−1, 1], "
              "recorded in the model file")
@click.option("--recipe", type=click.Choice(RECIPES), default="paper", show_default=True,
              help="paper: SPEC §1; best: twice the epochs, warmup + cosine lr; augment: best + shifts and flips "
              "(edgecc.train.BEST); anneal: 10 more epochs of warmup + cosine from --init")
@click.option("--init", default=None, type=click.Path(dir_okay=False, exists=True),
              help="model file to start from (same kind and scheme, or narrower coefficient networks or fewer maps; the anneal "
              "recipe needs one)")
@click.option("--epochs", type=int, default=None, help="[default: 20 (paper), 40 (best, augment), 10 (anneal)]")
@click.option("--weight-init", type=click.Choice(WEIGHT_INITS), default="default", show_default=True,
              help="variance: He init for the CL stacks' convolutions, beyond the paper (docs/k8.md: K=8 leaves "
              "chance within ~40 steps at lr 1e-4; the default init is still there after 150)")
@click.option("--teacher", default=None, type=click.Path(dir_okay=False, exists=True),
              help="a centralized model file (same images and classes) to distill from, beyond the paper: the loss "
              "mixes cross-entropy with the KL divergence from the teacher's softened predictions")
@click.option("--distill-weight", type=float, default=0.5, show_default=True, help="the KL term's share of the loss (with --teacher)")
@click.option("--distill-temperature", type=float, default=4.0, show_default=True, help="softmax temperature of both sides (with --teacher)")
@click.option("--batch", type=int, default=None, help="groups per step [default: 128 // K, the paper's 64 / 32]")
@click.option("--lr", type=float, default=None, help="Adam lr, the peak for best [default: 1e-3 (paper), 2e-3 (best)]")
@click.option("--seed", type=int, default=0, show_default=True)
@PRECISION
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads")
@COMPILE
@click.option("--limit", type=int, default=None, help="train on the first LIMIT images only")
@click.option("--data", "data", default="fashion-mnist", show_default=True,
              help="image source: its train split trains, its test split tests (fashion-mnist, cifar10:DIR, an .npz, "
              "a folder of class folders, ...; edgecc.datasets); the model takes its images' shape and classes")
@click.option("--data-dir", default=None, help="folder with the source's files (Fashion-MNIST: the IDX files)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model file to write (.safetensors)")
@click.option("--run-dir", default=None, type=click.Path(file_okay=False), help="checkpoint folder [default: OUT.run]")
@click.option("--resume", is_flag=True, help="continue from the last checkpoint (written after every epoch and every 10 minutes of training)")
@click.option("--quiet", is_flag=True)
def train(kind, K, G, P, computation, encoder, compute_arch, coef_width, maps, points, recipe, init, epochs, weight_init, teacher, distill_weight,
          distill_temperature, batch, lr, seed, precision, device, threads, compile_steps, limit, data, data_dir, out, run_dir,
          resume, quiet):
    """Train a model by the paper's protocol and save it as one safetensors file."""
    from ..coding.schemes import Scheme, chebyshev_points
    from ..train import TrainConfig, train as run_training

    own = chebyshev_points(K) if points == "chebyshev" else {}
    scheme = Scheme(K=K, G=G, P=P, computation=computation, encoder=arch_family(encoder), compute_arch=arch_family(compute_arch),
                    coef_width=coef_width, maps=maps, **own) if kind == "aicc" else None
    def progress(epoch: int, step: int, text: str) -> None:
        if quiet:
            return
        click.echo(f"\r{text}".ljust(100), nl=step == 0, err=True)  # step 0: an epoch's summary line

    try:  # a setting out of range, or a model or run that does not fit this training (init, teacher, resume, data)
        cfg = TrainConfig.for_recipe(recipe, epochs=epochs, batch=batch, lr=lr, seed=seed, precision=precision, device=device,
                                     threads=threads, limit=limit, data=data, data_dir=data_dir, init=init,
                                     weight_init=weight_init, teacher=teacher, distill_weight=distill_weight,
                                     distill_temperature=distill_temperature, compile=compile_steps)
        info = run_training(kind, scheme, cfg, out, run_dir=run_dir, resume=resume, progress=progress)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    last = info["training"]["history"][-1]
    click.echo(json.dumps({"out": out, "epochs": len(info["training"]["history"]), "test_accuracy_direct": last["test_accuracy_direct"],
                           "test_precision": last.get("test_precision", "fp32"), "train_seconds": info["training"]["train_seconds"]}))


@main.command("eval")
@click.argument("model", default="default")
@click.option("--N", "N", type=int, default=3, show_default=True, help="number of workers")
@click.option("--images", default="test", show_default=True,
              help="image source, read in the model's image shape: 'test', 'train', 'sample' (shipped), an .npz, "
              "cifar10:DIR or any source of edgecc.datasets")
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
    from ..evaluate import evaluate, evaluate_centralized, evaluate_learned_code
    from ..modelfile import load_model, resolve

    from ..protocol.images import model_image

    net, info = load_model(model)
    x, y = images_from(images, data_dir, limit, image=model_image(info))
    if info["kind"] == "aicc":
        from ..coding.conditioning import DEFAULT_TOLERANCE

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
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model file to write (.safetensors)")
def snapshot(run_dir, out):
    """Write the model of a run still training (RUN_DIR: `edgecc train`'s --run-dir, or a cell's folder under
    `reproduce run`'s --runs-dir) at its last checkpoint as a model file, for `edgecc eval`, `master` or `serve`.
    The file records the run and the epochs done; the run goes on untouched."""
    from ..modelfile import save_model
    from ..train import run_model

    try:
        model, info = run_model(run_dir)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from None
    save_model(out, model, info)
    history = info["training"]["history"]
    click.echo(json.dumps({"out": out, "kind": info["kind"], "epochs_done": info["training"]["snapshot"]["epochs_done"],
                           "test_accuracy_direct": history[-1]["test_accuracy_direct"] if history else None}))


@main.command()
@click.argument("model", default="default")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="bundle file to write")
@click.option("--placement", type=click.Choice(["encoded", "shared"]), default="encoded", show_default=True)
def export(model, out, placement):
    """Write what a worker needs for PLACEMENT as plain arrays with a checksum (H_B collapsed to one matrix)."""
    from ..bundle import save_bundle
    from ..export import bundle_info, worker_arrays
    from ..modelfile import load_model

    net, info = load_model(model)
    if info["kind"] != "aicc":
        raise click.UsageError("only AICC models are distributed to workers")
    arrays = worker_arrays(net, info, placement)
    d = save_bundle(out, bundle_info(info, placement), arrays)
    click.echo(json.dumps({"out": out, "placement": placement, "sha256": d, "arrays": {k: list(v.shape) for k, v in arrays.items()}}))


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
    """The paper's Tables 2 and 3, and AICC at K=8 (table k8): train each cell (resumable per cell and epoch),
    check, estimate, render."""


def _table(f):
    return click.option("--table", type=click.Choice(TABLE_NAMES), required=True,
                        help="the paper's table 2 or 3, or k8 (AICC at ApproxIFER's K=8, N=9)")(f)


TABLE_NAMES = ["2", "3", "k8"]  # edgecc.reproduce.TABLES, as the CLI names them (test_reproduce checks they match)


def _key(table):
    from ..reproduce import table_key

    return table_key(table)


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
        COMPILE,
        click.option("--limit", type=int, default=None,
                     help="train on the first LIMIT images only (smoke runs; rows record train_images)"),
    ]):
        f = opt(f)
    return f


_RESULTS_DIR = click.option("--results-dir", default="results", show_default=True)
_RUNS_DIR = click.option("--runs-dir", default="runs/reproduce", show_default=True, help="checkpoints after every epoch and every 10 minutes of training (resumable)")


def _config(recipe, epochs, seed, precision, device, threads, compile_steps, limit):
    from ..train import TrainConfig

    return TrainConfig.for_recipe(recipe, epochs=epochs, seed=seed, precision=precision, device=device, threads=threads,
                                  compile=compile_steps, limit=limit)


@reproduce.command("run")
@_table
@_only
@_recipe
@_training
@_RESULTS_DIR
@_RUNS_DIR
def reproduce_run(table, only, recipe, epochs, seed, precision, device, threads, compile_steps, limit, results_dir, runs_dir):
    """Train and evaluate cells (resumable); rows merge into results/ as each cell finishes, then print the table."""
    from ..reproduce import render_markdown, reproduce as run_cells

    def progress(cell, text):
        click.echo(f"\r[{cell}] {text}".ljust(110), nl=not text.startswith("epoch") or "done" in text, err=True)

    cfg = _config(recipe, epochs, seed, precision, device, threads, compile_steps, limit)
    try:
        run_cells(_key(table), list(only) or None, cfg, results_dir, runs_dir, progress)
    except ValueError as e:  # an unknown cell, a run dir of another configuration, anneal without its model
        raise click.UsageError(str(e)) from None
    click.echo(render_markdown(_key(table), results_dir))


@reproduce.command("check")
@_table
@_only
@_recipe
@_RESULTS_DIR
def reproduce_check(table, only, recipe, results_dir):
    """Re-evaluate committed checkpoints against their rows (±0.05); exit 1 on a mismatch. Trains nothing."""
    from ..reproduce import check

    try:
        rows = check(_key(table), results_dir, list(only) or None, recipe)
    except FileNotFoundError as e:  # no row of this table yet: nothing to check
        raise click.ClickException(f"{e}; `edgecc reproduce status --table {table}` says where its cells stand") from None
    for r in rows:
        click.echo(f"{r['cell']:20s} recorded {r['recorded']:.2f} measured {r['measured']:.2f} {'ok' if r['ok'] else 'MISMATCH'}")
    if not all(r["ok"] for r in rows):
        sys.exit(1)


@reproduce.command("estimate")
@_table
@_only
@_recipe
@_training
def reproduce_estimate(table, only, recipe, epochs, seed, precision, device, threads, compile_steps, limit):
    """Time a few training steps of each cell on this device; print what each run would take. Trains nothing."""
    from ..reproduce import estimate

    cfg = _config(recipe, epochs, seed, precision, device, threads, compile_steps, limit)
    try:
        rows = estimate(_key(table), list(only) or None, cfg)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
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
    from ..reproduce import status

    span = lambda m: f"{m:.0f} min" if m >= 1 else f"{60 * m:.0f} s"
    rows = status(_key(table), recipe, results_dir, runs_dir)
    name_width = max(20, *(len(r["cell"]) for r in rows))
    for r in rows:
        if r["state"] == "done":
            vs = "no paper figure" if r["paper"] is None else f"{r['delta']:+.2f} vs {r['paper']}"
            what = (f"done     {r['accuracy']:6.2f} ({vs}), {r['epochs']} epochs; "
                    f"this recipe's training took {span(r['minutes'])}")
        elif r["state"] == "partial":
            tested = ("no epoch finished yet" if r["last_accuracy"] is None
                      else f"test accuracy {r['last_accuracy']:.2f} after epoch {r['epochs']}")
            what = (f"partial  {r['epochs_done']:g} of {r['of']} epochs, {tested}, {span(r['minutes'])} of "
                    f"training so far, about {span(r['minutes_left'])} left at this pace (test passes not counted)")
        else:
            what = "not started"
        click.echo(f"{r['cell']:{name_width}s} {what}")


@reproduce.command("render")
@click.argument("file", default="docs/results.md", type=click.Path(exists=True, dir_okay=False))
@click.option("--table", "tables", type=click.Choice([*TABLE_NAMES, "seeds"]), multiple=True,
              help="only this table (default: every table whose marker line FILE has)")
@_RESULTS_DIR
def reproduce_render(file, tables, results_dir):
    """Re-render Tables 2, 3 and k8, and the cells trained with several seeds, from results/ under their marker
    lines in FILE (docs/results.md)."""
    from ..reproduce import render_into

    try:
        changed = render_into(file, [t if t == "seeds" else _key(t) for t in tables] or None, results_dir)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    for table, c in changed.items():
        click.echo(f"{file}: table {table} {'re-rendered' if c else 'already matches ' + results_dir}")


@main.command()
@click.option("--images", default="test", show_default=True, help="'test' (10,000 images), 'sample' or an .npz")
@click.option("--limit", type=int, default=None, help="first LIMIT images only (smoke runs; the table records the count)")
@click.option("--only", multiple=True, help="cell id prefix(es) to run, e.g. approxifer-cnn-K8 (default: every cell)")
@click.option("--points", type=click.Choice(["n", "n-1"]), default="n", show_default=True,
              help="ApproxIFER worker point set the table's main column shows: cos(iπ/N) or cos(iπ/(N−1))")
@click.option("--runs-dir", default="runs/schemes", show_default=True,
              help="one JSON per finished cell and model file (resumable; a retrained model is computed afresh)")
@click.option("--results-dir", default="results", show_default=True)
@click.option("--cached-only", is_flag=True, help="compute nothing: write the table from the cells already in --runs-dir "
              "(and the worker timings already in --results-dir's schemes.json, where it has them)")
@click.option("--partial", is_flag=True, help="evaluate each K=8 cell still training from its last epoch's checkpoint "
              "(a row labelled partial; minutes of CPU per cell)")
@click.option("--train-runs", default="runs/reproduce", show_default=True, help="`edgecc reproduce run`'s --runs-dir")
@click.option("--base", "base_file", default=None, metavar="FILE",
              help="a centralized model file (MLP, CNN or ResNet-18) as the base of ApproxIFER (at --points), replication "
              "and uncoded: only its rows, labelled with its name, written to RESULTS_DIR/schemes-<name>.{json,md}")
def compare(images, limit, only, points, runs_dir, results_dir, cached_only, partial, train_runs, base_file):
    """ApproxIFER, AICC, the learned code, replication and uncoded side by side: writes results/schemes.{json,md}."""
    from .. import schemes_table as st

    if base_file:
        import shlex

        command = shlex.join(["edgecc", "compare", "--base", base_file, "--images", images, "--points", points]
                             + (["--limit", str(limit)] if limit else []) + [a for o in only for a in ("--only", o)])
        try:
            _, j, m = st.base_table(base_file, runs_dir, images, limit, tuple(only), points, results_dir, cached_only,
                                    log=lambda msg: click.echo(msg, err=True), command=command)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--base") from None
        click.echo(m.read_text())
        click.echo(f"wrote {j} and {m}", err=True)
        return
    rows = st.run(runs_dir, images, limit, tuple(only), log=lambda m: click.echo(m, err=True), cached_only=cached_only,
                  results_dir=results_dir, train_runs=train_runs, partial=partial)
    measured = (st.previous_worker_seconds(results_dir) if cached_only else None) or st.measured_worker_seconds(st.base_computes())
    table = st.assemble(rows, measured, max((r["images"] for r in rows), default=0))
    table["main_points"] = points
    j, m = st.write(table, results_dir)
    click.echo(st.markdown(table, points))
    click.echo(f"wrote {j} and {m}", err=True)
    from ..scheme_map import write_map  # the same rows as points: accuracy against the master's cost

    png, md = write_map(j, results_dir)
    click.echo(f"wrote {png} and {md}", err=True)
