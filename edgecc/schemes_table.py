"""One table of straggler-mitigation schemes on the Fashion-MNIST test set (`edgecc compare`).

Every row is evaluated through the decode path a master uses, worst case over which workers straggle:

- ApproxIFER (coding/berrut.py) over the centralized MLP and CNN, K ∈ {2, 4, 8, 12}, S ∈ {1, 2, 3},
  N = K + S, both published worker point sets. Workers' outputs are computed once per group; every
  one of the C(N, S) straggler sets is then decoded from the other K workers (at most C(15, 3) = 455).
- AICC: every trained cell of Tables 2-3 (K = 2, 4), decoded from every R-subset (edgecc.evaluate); and the
  K = 8 cells of `edgecc reproduce --table k8` at the cell's N = 9 and at N = R + S for S = 1, 2, 3 (beside
  ApproxIFER's K = 8 rows). A K = 8 cell not trained to the end by the paper protocol shows as "not trained" or,
  from its run's last per-epoch checkpoint, as a row labelled "partial (epoch e of 20)", evaluated the same way;
  never as the protocol's result.
- The learned code [10] (shipped `learned-code`, k = 2): each data worker erased in turn.
- Replication (worker n runs image n mod K) and uncoded (N workers, N images) at the same N: a slot
  whose every copy straggles has no answer at the request deadline and counts as wrong.

Degraded-mode accuracy is over the slots not answered by a worker's own exact output (the straggler's
slot for replication, uncoded and the learned code; every decoded slot for AICC, and for ApproxIFER
every slot whose query point is not an answering worker's node). Overall accuracy is over all slots.

Each cell is written to RUNS_DIR/<cell>.json as it finishes, so an interrupted run resumes.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bench import costs
from .coding.berrut import WORKER_POINT_SETS, BerrutCode
from .coding.schemes import OURS
from .modelfile import atomic_write

KS = (2, 4, 8, 12)
SS = (1, 2, 3)
CNN_BASE = "results/checkpoints/table2/baseline-cnn.safetensors"
AICC_TABLES = ("table2", "table3", "table-k8", "table2-anneal", "table3-anneal", "table-k8-anneal")  # results/<name>.json with AICC rows
# A note under the table for each scheme that has rows in it (keyed, not compared: only edgecc/schemes asks
# which scheme it runs, tests/test_schemes_registry.py)
SCHEME_NOTES = {
    "aicc": "AICC at K=8 (`edgecc reproduce run --table k8`): each trained cell at its N=9 and at N = R + S, S = 1-3. "
            "'not trained' and 'training, epoch e/20' rows have no accuracy yet; a 'partial (epoch e of 20)' row is "
            "that run's last per-epoch checkpoint evaluated the same way, not the paper protocol's 20-epoch result.",
}
TRAIN_RUNS = "runs/reproduce"  # where `edgecc reproduce run` keeps each cell's per-epoch checkpoint
# ApproxIFER's plotted Fashion-MNIST degraded-mode accuracy (ResNet-18 base at 0.97; SPEC §4), by (K, S).
# The S=2 and S=3 figures are shown beside K=8, the operating point of the paper's straggler sweep.
PAPER = {(8, 1): 0.74, (10, 1): 0.73, (12, 1): 0.72, (8, 2): 0.655, (8, 3): 0.64}
PAPER_BASE = 0.97
LEARNED_CODE_CELL = "learned-code"  # the shipped learned code's one cell (its k = 2, S = 1)
# images per round of a copies cell: replication spreads K images over N = K + S workers (worker n holds
# image n mod K); uncoded gives each of its N workers an image of its own
COPIES_SLOTS = {"replication": lambda K, S: K, "uncoded": lambda K, S: K + S}
PIX_BYTES = 784 * 4  # one float32 image on the wire (f4)
OUT_BYTES = 10 * 4  # one float32 logit vector back


# -- worker computes (what a plain worker runs) ---------------------------------------------------
def base_computes(cnn_path: str = CNN_BASE) -> dict[str, Any]:
    """{"mlp": numpy PlainCompute of the shipped centralized MLP, "cnn": the torch compute of Table 2's CNN}."""
    from .modelfile import load_model
    from .worker.compute import PlainCompute
    from .worker.plain_cnn import PlainTorchCompute, cnn_arrays

    mlp, _ = load_model("default-mlp")
    cnn, info = load_model(cnn_path)
    if info["kind"] != "centralized-cnn":
        raise ValueError(f"{cnn_path} holds a {info['kind']!r} model, not the centralized CNN")
    return {"mlp": PlainCompute({f"mlp.{k}": v.float().numpy() for k, v in mlp.state_dict().items()}),
            "cnn": PlainTorchCompute("cnn", cnn_arrays(cnn))}


def worker_flops(base: str) -> int:
    if base == "resnet18":
        return resnet18_flops()
    return costs.mlp_baseline_flops() if base == "mlp" else costs.cnn_baseline_flops()


def resnet18_flops(image: tuple[int, int, int] = (1, 28, 28), classes: int = 10) -> int:
    """nets/resnet.ResNet18 on ONE image, 2 FLOPs per multiply-add (convolutions and the linear layer; batch
    norm, ReLU and pooling left out, as in bench/costs): 0.91 G for a 1×28×28 image."""
    from .nets.resnet import BLOCKS_PER_STAGE, STAGES

    c, h, w = image
    flops, cin = 2 * 9 * c * 64 * h * w, 64
    for cout, stride in STAGES:
        for i in range(BLOCKS_PER_STAGE):
            s = stride if i == 0 else 1
            h, w = -(-h // s), -(-w // s)  # a 3×3 conv, padding 1, stride s
            flops += 2 * 9 * (cin + cout) * cout * h * w + (2 * cin * cout * h * w if s != 1 or cin != cout else 0)
            cin = cout
    return flops + 2 * cin * classes


# -- a base model from a file (`edgecc compare --base FILE`) --------------------------------------
BASE_LABELS = {"mlp": "MLP", "cnn": "CNN", "resnet18": "ResNet-18"}


def file_base(path: str | Path) -> tuple[str, Callable, dict[str, Any]]:
    """(name, compute, info) of a centralized model file: its name in cell ids and rows ("resnet18" for a
    centralized-resnet18), the numpy-in, numpy-out compute its plain workers run (worker/plain_cnn), its info."""
    from .modelfile import load_model
    from .protocol.images import PAPER_IMAGE, model_image
    from .schemes.base import CENTRALIZED, base_arrays
    from .worker.plain_cnn import plain_compute

    model, info = load_model(path)
    if info["kind"] not in CENTRALIZED:
        raise ValueError(f"{path} holds a {info['kind']!r} model; a base is one of {', '.join(CENTRALIZED)}")
    if model_image(info) != PAPER_IMAGE:
        raise ValueError(f"{path} takes {model_image(info)} images; the table's images are Fashion-MNIST's {PAPER_IMAGE}")
    return info["kind"].removeprefix("centralized-"), plain_compute(base_arrays(model, info)), info


def base_cells(name: str, points: str = "n") -> list[str]:
    """The cell ids of one base model, in the order they run: the model alone, replication and uncoded (cheap once
    the model has run on the test set), then ApproxIFER at worker point set `points`, K and S ascending."""
    ids = [f"base-{name}"]
    for S in SS:
        for K in KS:
            ids += [f"replication-{name}-K{K}-S{S}", f"uncoded-{name}-K{K}-S{S}"]
    return ids + [f"approxifer-{name}-K{K}-S{S}-{points}" for S in SS for K in KS]


def groups(x: np.ndarray, y: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    G = x.shape[0] // K
    return x[: G * K].reshape(G, K, 28, 28), y[: G * K].reshape(G, K)


# -- cells ----------------------------------------------------------------------------------------
def approxifer_cell(compute: Callable, base: str, K: int, S: int, points: str, x: np.ndarray, y: np.ndarray,
                    chunk: int = 256) -> dict[str, Any]:
    N = K + S
    code = BerrutCode(K, N, points)
    xg, yg = groups(x, y, K)
    out = np.empty((xg.shape[0], N, 10), dtype=np.float32)
    for i in range(0, xg.shape[0], chunk):
        wx = code.encode(xg[i : i + chunk])  # (b, N, 28, 28) float32
        out[i : i + chunk] = compute(wx.reshape(-1, 28, 28)).reshape(-1, N, 10)
    rows = []
    for stragglers in itertools.combinations(range(N), S):
        answered = [n for n in range(N) if n not in stragglers]
        W = code.decode_weights(answered)
        correct = np.einsum("kn,gnv->gkv", W, out[:, answered].astype(np.float64)).argmax(-1) == yg
        exact = np.isclose(W.max(axis=1), 1.0) & np.isclose(np.abs(W).sum(axis=1), 1.0)  # query on an answering node
        rows.append((float(correct.mean()), float(correct[:, ~exact].mean()) if (~exact).any() else None, stragglers))
    worst = min(rows, key=lambda r: r[0])
    full = np.einsum("kn,gnv->gkv", code.decode_weights(range(N)), out.astype(np.float64)).argmax(-1) == yg
    return {"scheme": "approxifer", "base": base, "K": K, "S": S, "N": N, "points": points,
            "overall_worst": worst[0], "degraded_worst": min((r[1] for r in rows if r[1] is not None), default=None),
            "overall_mean": float(np.mean([r[0] for r in rows])), "worst_stragglers": list(worst[2]),
            "no_straggler": float(full.mean()), "straggler_sets": len(rows), "images": int(yg.size),
            "worker_flops": worker_flops(base), "worker_calls_per_image": N / K,
            "master_flops_per_image": 2 * N * K * 784 / K + 2 * K * K * 10 / K,
            "up_bytes_per_image": N * PIX_BYTES / K, "down_bytes_per_image": N * OUT_BYTES / K}


def aicc_cells(results_dir: str | Path = "results") -> list[tuple[str, str, int, int, float]]:
    """(cell id, checkpoint, N, K, recorded accuracy) for every trained AICC cell of Tables 2-3 and table k8, by the
    paper protocol and the anneal recipe (ids end in -anneal); a K = 8 cell also at N = R + S for each S in SS
    (ApproxIFER's K = 8 operating points)."""
    cells = []
    for name in AICC_TABLES:
        f = Path(results_dir) / f"{name}.json"
        if not f.exists():
            continue
        t = json.loads(f.read_text())
        for r in t["rows"]:
            if r.get("kind") != "aicc" or not Path(r.get("checkpoint", "")).exists():
                continue
            K, N, R = int(r["scheme"]["K"]), int(r["N"]), int(r["R"])
            recipe = "" if t.get("recipe", "paper") == "paper" else f"-{t['recipe']}"
            if t["table"] != "k8":  # (ids as before table k8 existed)
                cells.append((f"aicc-t{t['table']}-{r['cell']}{recipe}", r["checkpoint"], N, K, float(r["accuracy"])))
                continue
            cid = f"aicc-{r['cell']}{recipe}"
            for n in sorted({N} | {R + S for S in SS}):
                cells.append((cid + ("" if n == N else f"-N{n}"), r["checkpoint"], n, K, float(r["accuracy"])))
    return cells


def _aicc_costs(s, N: int, weight_init: str = "default", recipe: str = "paper") -> dict[str, Any]:
    """What an AICC scheme costs per classified image at N workers (from the scheme alone, trained or not); a
    model trained from an init or by a recipe beyond the paper's says so in its label."""
    worker = costs.encoded_worker_flops(s)
    up = costs.up_payload_per_worker(s, "encoded")  # x̃_n, and V_0..V_P for H_S, in f4
    beyond = ["He init"] * (weight_init == "variance") + [f"{recipe} recipe"] * (recipe != "paper")
    label = s.label() + (f", {', '.join(beyond)} {OURS}" if beyond else "")
    return {"scheme": "aicc", "base": label, "K": s.K, "S": N - s.R, "N": N, "R": s.R, "points": s.worker_points or "n/(N+1)",
            "worker_flops": worker, "worker_calls_per_image": N / s.K,
            "master_flops_per_image": costs.master_encode_flops(s, N) / s.K,
            "up_bytes_per_image": N * up / s.K, "down_bytes_per_image": N * OUT_BYTES / s.K}


def aicc_cell(path: str, N: int, x_u8: np.ndarray, y: np.ndarray, model_info: tuple | None = None) -> dict[str, Any]:
    """A trained AICC model file at N workers (or `model_info` = (model, info) already loaded)."""
    from .coding.schemes import Scheme
    from .evaluate import evaluate
    from .modelfile import load_model

    model, info = model_info or load_model(path)
    s = Scheme.from_dict(info["scheme"])
    ev = evaluate(model, info, x_u8, y, N, max_subsets=None, encode_precision="fp32")
    training = info.get("training", {})
    return {**_aicc_costs(s, N, training.get("weight_init", "default"), training.get("recipe", "paper")),
            "overall_worst": ev["accuracy_decoded_min"] / 100, "degraded_worst": ev["accuracy_decoded_min"] / 100,
            "overall_mean": ev["accuracy_decoded_mean"] / 100, "best_subset": ev["accuracy_decoded_max"] / 100,
            "no_straggler": ev["accuracy_direct"] / 100,  # any R answers decode the same polynomial
            "straggler_sets": ev["subsets_evaluated"], "images": ev["images"], "checkpoint": path}


def k8_progress(results_dir: str | Path = "results", train_runs: str | Path = TRAIN_RUNS) -> list[dict[str, Any]]:
    """Each paper-protocol K = 8 cell without a trained model here: {cell, scheme, N, state, epoch, of, run_dir};
    state as edgecc.reproduce.status says, "done" only where the row's checkpoint is missing here; epoch 0 where
    the training has not checkpointed an epoch."""
    from .reproduce import TABLE_K8, checkpoint_path, results_name, status

    out = []
    for st, cell in zip(status("k8", "paper", results_dir, train_runs), TABLE_K8):
        if st["state"] == "done" and checkpoint_path(results_dir, "k8", "paper", cell.name).is_file():
            continue  # aicc_cells evaluates it
        out.append({"cell": cell.name, "scheme": cell.scheme, "weight_init": cell.weight_init, "N": cell.N, "state": st["state"],
                    "epoch": st.get("epochs", 0) if st["state"] == "partial" else 0, "of": st.get("of", 20),
                    "last_accuracy": st.get("last_accuracy"),
                    "run_dir": Path(train_runs) / results_name("k8", "paper") / cell.name})
    return out


def k8_status_row(p: dict[str, Any]) -> dict[str, Any]:
    """A K = 8 cell's row with its costs and no accuracy columns: "not trained", "training, epoch e/20" (with the
    direct test accuracy the training measured after that epoch, not decoded), or trained elsewhere (a row in
    results/table-k8.json whose checkpoint is not here)."""
    status = ("trained, checkpoint not here" if p["state"] == "done" else
              f"training, epoch {p['epoch']}/{p['of']}; direct accuracy then {p['last_accuracy']:.2f}, not decoded"
              if p["epoch"] else "not trained")
    return {**_aicc_costs(p["scheme"], p["N"], p["weight_init"]), "cell": f"aicc-{p['cell']}", "status": status, "overall_worst": None,
            "degraded_worst": None, "overall_mean": None, "no_straggler": None, "images": 0}


def k8_partial_row(p: dict[str, Any], x_u8: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The K = 8 cell's model at its run's last checkpointed epoch, evaluated as a trained cell is, labelled
    as partial: it is not the paper protocol's 20-epoch result."""
    from .train import run_model

    model, info = run_model(p["run_dir"])
    epoch = info["training"]["epochs"]  # the label below replaces the recipe's; the init's ("He init") stays
    row = aicc_cell(str(Path(p["run_dir"]) / "checkpoint.pt"), p["N"], x_u8, y, (model, info))
    row.update(status=f"partial (epoch {epoch} of {p['of']}; not the paper protocol's result)", epoch=int(epoch))
    return row


def learned_code_cell(x_u8: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    import torch

    from .data import to_float
    from .modelfile import load_model
    from .schemes.learned_code import LearnedCodePlan

    model, info = load_model("learned-code")
    plan = LearnedCodePlan(model, info)
    k = plan.k
    xg, yg = groups(to_float(x_u8), y, k)
    with torch.inference_mode():
        xt = torch.from_numpy(xg)
        data = model.base(xt.reshape(-1, 28, 28)).reshape(-1, k, 10).numpy()
        parity = model.base(model.encoder(xt)).numpy()
    results = {n: data[:, n] for n in range(k)} | {k: parity}
    rows = []
    for lost in range(k):  # the parity worker straggling changes nothing: every data slot is exact
        got = plan.decode({n: r for n, r in results.items() if n != lost}).argmax(-1) == yg
        rows.append((float(got.mean()), float(got[:, lost].mean()), lost))
    worst = min(rows)
    complete = float((data.argmax(-1) == yg).mean())  # the parity worker straggled: every data slot exact
    return {"scheme": "learned-code", "base": "mlp", "K": k, "S": 1, "N": k + 1, "points": None,
            "overall_worst": worst[0], "degraded_worst": min(r[1] for r in rows), "worst_stragglers": [worst[2]],
            "overall_mean": float(np.mean([r[0] for r in rows] + [complete])), "no_straggler": complete, "straggler_sets": k + 1, "images": int(yg.size),
            "worker_flops": costs.mlp_baseline_flops(), "worker_calls_per_image": (k + 1) / k,
            "master_flops_per_image": None, "up_bytes_per_image": (k + 1) * PIX_BYTES / k,
            "down_bytes_per_image": (k + 1) * OUT_BYTES / k}


def copies_cell(scheme: str, base: str, correct: np.ndarray, K: int, S: int) -> dict[str, Any]:
    """Replication (N = K + S workers, worker n on image n mod K) or uncoded (N workers, N images), from the
    base model's per-image correctness; worst case over every straggler set."""
    N = K + S
    slots = COPIES_SLOTS[scheme](K, S)
    owner = [n % slots for n in range(N)]
    G = correct.size // slots
    c = correct[: G * slots].reshape(G, slots)
    rows = []
    for st in itertools.combinations(range(N), S):
        lost = [k for k in range(slots) if all(n in st for n in range(N) if owner[n] == k)]
        ok = np.delete(c, lost, axis=1).sum() / c.size
        rows.append((float(ok), 0.0 if lost else None, st))
    worst = min(rows, key=lambda r: r[0])
    degraded = [r[1] for r in rows if r[1] is not None]
    return {"scheme": scheme, "base": base, "K": K, "S": S, "N": N, "points": None, "images_per_round": slots,
            "overall_worst": worst[0], "degraded_worst": min(degraded) if degraded else None,
            "tolerates": not degraded, "worst_stragglers": list(worst[2]),
            "overall_mean": float(np.mean([r[0] for r in rows])), "no_straggler": float(c.mean()),
            "straggler_sets": len(rows), "images": int(c.size), "worker_flops": worker_flops(base),
            "worker_calls_per_image": N / slots, "master_flops_per_image": 0,
            "up_bytes_per_image": N * PIX_BYTES / slots, "down_bytes_per_image": N * OUT_BYTES / slots}


def measured_worker_seconds(computes: dict[str, Any], n: int = 512) -> dict[str, float]:
    """Seconds per image of each worker compute, measured side by side in this process (best of 3)."""
    from .worker.compute import EncodedCompute
    from .coding.schemes import Scheme

    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28), dtype=np.float32)
    affine = EncodedCompute(Scheme(K=2), {"affine.weight": rng.normal(size=(10, 784)).astype(np.float32),
                                          "affine.bias": np.zeros(10, np.float32)})
    return {name: seconds_per_image(f, x) for name, f in {"mlp": computes["mlp"], "cnn": computes["cnn"], "aicc-affine": affine}.items()}


def seconds_per_image(f: Callable, x: np.ndarray) -> float:
    """Seconds per image of compute f on images x, best of 3 (after a warm-up call on 8 images)."""
    f(x[:8])
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        f(x)
        best = min(best, time.perf_counter() - t)
    return best / x.shape[0]


def _written(table_json: Path) -> dict[str, Any]:
    """A table written before (schemes.json or a `--base` companion), or {} where there is none."""
    return json.loads(table_json.read_text()) if table_json.is_file() else {}


def previous_worker_seconds(results_dir: str | Path = "results") -> dict[str, float] | None:
    """The worker timings of the table last written to results_dir (what `compare --cached-only` keeps), if any."""
    return _written(Path(results_dir) / "schemes.json").get("worker_seconds_per_image")


# -- the run --------------------------------------------------------------------------------------
def plan_cells(results_dir: str | Path = "results") -> list[str]:
    """Cell ids in the order they run, cheapest and most telling first: the copies and MLP-base cells, the
    CNN-base K=8, S=1 row with both point sets, the best AICC cell of each operating point, then the rest."""
    ids = ["base-mlp", "base-cnn", LEARNED_CODE_CELL]
    for base in ("mlp", "cnn"):
        for S in SS:
            for K in KS:
                ids += [f"replication-{base}-K{K}-S{S}", f"uncoded-{base}-K{K}-S{S}"]
    for points in WORKER_POINT_SETS:
        ids += [f"approxifer-mlp-K{K}-S{S}-{points}" for S in SS for K in KS]
    ids += [f"approxifer-cnn-K8-S1-{points}" for points in WORKER_POINT_SETS]
    aicc = aicc_cells(results_dir)
    best: dict[tuple[int, int], tuple[float, str]] = {}
    for cid, _, N, K, acc in aicc:
        best[(K, N)] = max(best.get((K, N), (-1.0, "")), (acc, cid))
    ids += [cid for _, cid in sorted(best.values(), key=lambda v: v[1])]
    for points in WORKER_POINT_SETS:
        ids += [f"approxifer-cnn-K{K}-S{S}-{points}" for S in SS for K in KS]
    ids += [cid for cid, *_ in aicc]
    return list(dict.fromkeys(ids))


def _model_file(cid: str, aicc: dict[str, tuple[str, int]]) -> str:
    """The model file cell `cid`'s row is computed from: its checkpoint (AICC), the shipped learned code, or the
    centralized base its scheme runs (base-, replication-, uncoded-, approxifer-BASE-...)."""
    if cid in aicc:
        return aicc[cid][0]
    if cid == LEARNED_CODE_CELL:
        return "learned-code"
    return {"mlp": "default-mlp", "cnn": CNN_BASE}[cid.split("-")[1]]


def run(runs_dir: str | Path = "runs/schemes", images: str = "test", limit: int | None = None, only: tuple[str, ...] = (),
        log: Callable[[str], None] = print, cached_only: bool = False, results_dir: str | Path = "results",
        train_runs: str | Path = TRAIN_RUNS, partial: bool = False, base_file: str | Path | None = None,
        points: str = "n") -> list[dict[str, Any]]:
    """Every cell's row, computed or read back from RUNS_DIR, where each row is cached under its cell and the content
    of the model file it came from (`cached_only`: read back only, compute nothing), then a
    row for each K = 8 cell still training: its status, or with `partial` its last epoch's checkpoint evaluated
    (minutes of CPU per epoch for the width-160 encoders: opt-in; cached per epoch).

    With `base_file` (a centralized model file): only that model's cells (base_cells: the model alone, replication,
    uncoded, ApproxIFER at `points`), cached under RUNS_DIR/<name>-<the file's content id>, so a retrained model
    is computed afresh."""
    from .data import to_float
    from .datasets import load_arrays
    from .modelfile import content_id

    runs = Path(runs_dir)
    x_u8, y = load_arrays(images)
    if limit:
        x_u8, y = x_u8[:limit], y[:limit]
    y = y.astype(np.int64)
    x = to_float(x_u8)
    model_ids: dict[str, str] = {}  # by file: ~100 cells share the two base models, a K=8 checkpoint serves 4 N's
    if base_file is not None:
        name, compute, _ = file_base(base_file)
        computes, aicc, cells = {name: compute}, {}, base_cells(name, points)
        model_ids[base_file] = content_id(base_file).removeprefix("sha256:")
        runs = runs / f"{name}-{model_ids[base_file]}"
    else:
        computes = base_computes()
        aicc = {c: (p, N) for c, p, N, *_ in aicc_cells(results_dir)}
        cells = plan_cells(results_dir)
    runs.mkdir(parents=True, exist_ok=True)
    tag = f"{images}-{len(y)}"
    written = _written_rows(base_paths(name, results_dir)[0] if base_file is not None else Path(results_dir) / "schemes.json")
    base_correct: dict[str, np.ndarray] = {}
    rows = []
    for cid in cells:
        keep = base_file is not None and cid.startswith("base-")  # a base file's own accuracy: every row's 'rel.'
        if only and not keep and not any(cid.startswith(o) for o in only):
            continue
        # a cached row counts for the model file it was computed from: a retrained model is computed afresh
        # (a --base file's cells are cached under a folder named by its content already)
        f = base_file if base_file is not None else _model_file(cid, aicc)
        if f not in model_ids:
            model_ids[f] = content_id(f).removeprefix("sha256:")
        path = runs / f"{cid}@{tag}{'' if base_file is not None else '-' + model_ids[f]}.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
            continue
        # the table last written holds every row it was made of: one from the same model file and images is
        # taken as it is (a fresh clone refreshes the table by computing only its new or retrained cells)
        if (old := written.get(cid)) and old.get("model_id") == model_ids[f] and old.get("image_set") == tag:
            atomic_write(path, json.dumps(old, indent=1).encode())
            rows.append(old)
            continue
        if cached_only:
            log(f"{cid}: not computed yet, left out")
            continue
        t = time.perf_counter()
        parts = cid.split("-")
        if cid.startswith("base-") or cid.startswith(("replication-", "uncoded-")):
            base = parts[1]
            if base not in base_correct:
                base_correct[base] = computes[base](x).argmax(-1) == y
            if cid.startswith("base-"):
                row = {"scheme": "centralized", "base": base, "K": 1, "S": 0, "N": 1, "no_straggler": float(base_correct[base].mean()),
                       "overall_worst": float(base_correct[base].mean()), "images": int(y.size), "worker_flops": worker_flops(base)}
            else:
                row = copies_cell(parts[0], base, base_correct[base], int(parts[2][1:]), int(parts[3][1:]))
        elif cid == LEARNED_CODE_CELL:
            row = learned_code_cell(x_u8, y)
        elif cid.startswith("approxifer-"):
            row = approxifer_cell(computes[parts[1]], parts[1], int(parts[2][1:]), int(parts[3][1:]), "-".join(parts[4:]), x, y)
        else:
            row = aicc_cell(aicc[cid][0], aicc[cid][1], x_u8, y)
        row["cell"], row["seconds"] = cid, round(time.perf_counter() - t, 1)
        row["model_id"], row["image_set"] = model_ids[f], tag
        atomic_write(path, json.dumps(row, indent=1).encode())
        log(f"{cid}: overall {row['overall_worst']:.4f} ({row['seconds']:.0f} s)")
        rows.append(row)
    if base_file is not None:
        return rows
    for p in k8_progress(results_dir, train_runs):
        cid = f"aicc-{p['cell']}"
        if only and not any(cid.startswith(o) for o in only):
            continue
        path = runs / f"{cid}-partial-e{p['epoch']}@{tag}.json"
        if p["epoch"] and partial and path.exists():
            rows.append(json.loads(path.read_text()))
        elif p["epoch"] and partial and not cached_only:
            t = time.perf_counter()
            row = k8_partial_row(p, x_u8, y)
            row["cell"], row["seconds"] = f"{cid}-partial-e{p['epoch']}", round(time.perf_counter() - t, 1)
            atomic_write(path, json.dumps(row, indent=1).encode())
            log(f"{cid}: {row['status']}: overall {row['overall_worst']:.4f} ({row['seconds']:.0f} s)")
            rows.append(row)
        else:
            rows.append(k8_status_row(p))
    return rows


ASSEMBLED = ("relative_to_base", "degraded_relative_to_base", "paper", "paper_relative_to_base")  # assemble()'s


def _written_rows(table_json: Path) -> dict[str, dict[str, Any]]:
    """{cell: row} of a table written before, as run() computed them."""
    return {r["cell"]: {k: v for k, v in r.items() if k not in ASSEMBLED}
            for r in _written(table_json).get("rows", []) if "cell" in r}


def assemble(rows: list[dict[str, Any]], measured: dict[str, float] | None, images: int) -> dict[str, Any]:
    bases = {r["base"]: r["no_straggler"] for r in rows if r["scheme"] == "centralized"}
    for r in rows:
        b = bases.get(r["base"])
        r["relative_to_base"] = None if not b or r.get("overall_worst") is None else r["overall_worst"] / b  # (b = 0: untrained)
        r["degraded_relative_to_base"] = None if not b or r.get("degraded_worst") is None else r["degraded_worst"] / b
        if r.get("points") in WORKER_POINT_SETS and (r["K"], r["S"]) in PAPER:  # ApproxIFER's rows
            r["paper"] = PAPER[(r["K"], r["S"])]
            r["paper_relative_to_base"] = PAPER[(r["K"], r["S"])] / PAPER_BASE
    return {"table": "schemes", "images": images, "bases": bases, "paper": {"base": PAPER_BASE,
            "figures": {f"K={k},S={s}": v for (k, s), v in PAPER.items()}},
            "worker_seconds_per_image": measured, "rows": rows}


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def _num(v) -> str:
    if v is None:
        return "—"
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v:,.0f}"


def markdown(table: dict[str, Any], points: str = "n") -> str:
    """The README-sized table: one row per scheme and operating point (ApproxIFER with `points`)."""
    rows = table["rows"]
    berrut = [r for r in rows if r.get("points") in WORKER_POINT_SETS]  # ApproxIFER's rows, at either point set
    other = {(r["base"], r["K"], r["S"]): r for r in berrut if r["points"] != points}
    b = table["bases"]
    shown = list(b) if set(b) - {"mlp", "cnn"} else ["mlp", "cnn"]  # the main table names both, measured or not
    bases = ", ".join(f"{BASE_LABELS.get(k, k)} {_pct(b.get(k))}" for k in shown)
    out = [f"Fashion-MNIST test set ({table['images']:,} images). Accuracy in %, worst case over every set of S "
           f"straggling workers ('mean': over all those sets); 'rel.' = overall / the scheme's own centralized base ({bases}"
           f"; ApproxIFER's paper: ResNet-18 at {100 * PAPER_BASE:.0f}). ApproxIFER's workers "
           f"at cos(iπ/{'N' if points == 'n' else '(N−1)'}); the other point set in the last-but-one column.",
           "",
           "| scheme | base | K | S | N | degraded | overall | mean | rel. | no straggler | other points | paper (rel.) "
           "| worker FLOPs/img | master FLOPs/img | up bytes/img |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def key(r):
        order = {"approxifer": 0, "aicc": 1, "learned-code": 2, "replication": 3, "uncoded": 4}
        return (r["K"], r["S"], order.get(r["scheme"], 9), r["base"])

    for r in sorted((r for r in rows if r["scheme"] != "centralized" and r.get("points") in (points, None, "n/(N+1)")), key=key):
        o = other.get((r["base"], r["K"], r["S"])) if r.get("points") in WORKER_POINT_SETS else None
        paper = f"{100 * r['paper']:.1f} ({r['paper_relative_to_base']:.2f})" if r.get("paper") else "—"
        flops = r["worker_flops"] * r.get("worker_calls_per_image", 1)
        name = r["scheme"] + ("" if r.get("tolerates", True) else " ✗") + (f" ({r['status']})" if r.get("status") else "")
        rel = "—" if r.get("relative_to_base") is None else f"{r['relative_to_base']:.3f}"
        out.append(f"| {name} | {r['base']} | {r['K']} | {r['S']} | {r['N']} | {_pct(r.get('degraded_worst'))} | "
                   f"{_pct(r['overall_worst'])} | {_pct(r.get('overall_mean'))} | {rel} | "
                   f"{_pct(r.get('no_straggler'))} | {_pct(o['overall_worst']) if o else '—'} | {paper} | {_num(flops)} | {_num(r.get('master_flops_per_image'))} | "
                   f"{_num(r.get('up_bytes_per_image'))} |")
    out += ["", "✗: cannot tolerate S stragglers: the worst straggler set leaves a slot unanswered at the deadline "
            "(counted wrong; degraded = that slot); uncoded sends N images to N workers per round. Worker FLOPs/img = one worker call × worker calls per image (N/K). "
            "Up bytes/img: f4 payload per classified image (no framing)."]
    out += [SCHEME_NOTES[s] for s in dict.fromkeys(r["scheme"] for r in rows) if s in SCHEME_NOTES]
    out.append("ApproxIFER's published Fashion-MNIST figures (ResNet-18 base, 97% clean): "
               + "; ".join(f"K={k}, S={s_}: {100 * v:.1f}" for (k, s_), v in PAPER.items())
               + " (the S=2, 3 figures are shown beside K=8). Its point sets measured side by side: 'other points'.")
    m = table.get("worker_seconds_per_image")
    if m:
        out.append("Measured worker compute per image on this machine (one process, best of 3, CPU shared with other "
                   "jobs: " + ", ".join(f"{k} {v * 1e6:.1f} µs" for k, v in m.items()) + ").")
    return "\n".join(out) + "\n"


def write(table: dict[str, Any], results_dir: str | Path = "results") -> tuple[Path, Path]:
    d = Path(results_dir)
    j, m = d / "schemes.json", d / "schemes.md"
    atomic_write(j, json.dumps(table, indent=1).encode())
    others = sorted(f.name for f in d.glob("schemes-*.md"))  # base_table's companion tables (`compare --base`)
    link = ("\nThe same schemes over other base models (`edgecc compare --base FILE`): "
            + ", ".join(f"[{n}]({n})" for n in others) + ".\n") if others else ""
    atomic_write(m, ("# Straggler-mitigation schemes side by side\n\nWritten by `edgecc compare`.\n\n"
                     + markdown(table, table.get("main_points", "n")) + link).encode())
    return j, m


# -- one base model's table (`edgecc compare --base FILE`) ----------------------------------------
def base_paths(name: str, results_dir: str | Path = "results") -> tuple[Path, Path]:
    """Where a base model's companion table goes: results/schemes-resnet18.{json,md}."""
    return Path(results_dir) / f"schemes-{name}.json", Path(results_dir) / f"schemes-{name}.md"


def model_summary(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """What a base model file says about itself: its kind, storage and how it was trained."""
    tr = info.get("training", {})
    last = (tr.get("history") or [{}])[-1]
    keys = ("epochs", "train_images", "seed", "recipe", "lr", "batch", "precision", "train_seconds", "torch")
    return {"file": str(path), "kind": info["kind"], "storage": info.get("storage", "f32"),
            **{k: tr.get(k) for k in keys}, "training_test_accuracy": last.get("test_accuracy_direct"),
            "training_test_precision": last.get("test_precision")}


def machine() -> dict[str, Any]:
    """The CPU these rows were computed on, and torch's threads."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def base_table(base_file: str | Path, runs_dir: str | Path = "runs/schemes", images: str = "test", limit: int | None = None,
               only: tuple[str, ...] = (), points: str = "n", results_dir: str | Path = "results", cached_only: bool = False,
               log: Callable[[str], None] = print, command: str | None = None) -> tuple[dict[str, Any], Path, Path]:
    """The rows of one centralized model file as the schemes' base (run with base_file), assembled and written to
    results/schemes-<name>.{json,md} with the model's training, the machine and `command`; the main table is
    left alone (write() links the companion)."""
    rows = run(runs_dir, images, limit, only, log, cached_only, results_dir, base_file=base_file, points=points)
    name, compute, info = file_base(base_file)
    j, m = base_paths(name, results_dir)
    measured = _written(j).get("worker_seconds_per_image") if cached_only else None
    if measured is None:
        measured = {name: seconds_per_image(compute, np.random.default_rng(0).random((16, 28, 28), dtype=np.float32))}
    table = assemble(rows, measured, max((r["images"] for r in rows), default=0))
    table.update(main_points=points, base=name, model=model_summary(base_file, info), command=command, machine=machine())
    atomic_write(j, json.dumps(table, indent=1).encode())
    atomic_write(m, base_markdown(table).encode())
    return table, j, m


def base_markdown(table: dict[str, Any]) -> str:
    """A companion table: the base model, how it was trained, the command and machine, then markdown()'s rows."""
    mo, name = table["model"], table["base"]
    label = BASE_LABELS.get(name, name)
    acc = table["bases"].get(name)
    trained = (f"{mo['epochs']} epoch{'s' if mo['epochs'] != 1 else ''} on the first {mo['train_images']:,} Fashion-MNIST "
               f"training images, seed {mo['seed']}, recipe {mo['recipe']} (Adam lr {mo['lr']:g}, batch {mo['batch']}, "
               f"{mo['precision']} autocast; {mo['train_seconds']:.0f} s of training)" if mo.get("epochs") else "untrained")
    mc = table["machine"]
    at_training = mo.get("training_test_accuracy")
    before = ("" if at_training is None or mo["storage"] == "f32" else
              f"; {at_training:.2f} in its training run's {mo['training_test_precision']} test pass, before it was stored as {mo['storage']}")
    paragraphs = [
        f"# Straggler-mitigation schemes over a {label} base",
        "Written by `edgecc compare --base`; the main table (MLP and CNN bases, AICC, the learned code): [schemes.md](schemes.md).",
        (f"Base model: `{mo['file']}` ({mo['kind']}, stored as {mo['storage']}): {trained}; its test accuracy here "
         f"{_pct(acc)} (fp32, from the stored file{before})."),
        f"Command: `{table.get('command') or 'edgecc compare --base ' + mo['file']}`",
        f"Machine: {mc['cpu']}, {mc['cpus']} CPUs, torch {mc['torch']} with {mc['torch_threads']} thread(s).",
        (f"ApproxIFER's workers at the one point set shown ('other points' not computed); its paper's figures (ResNet-18 at "
         f"{100 * PAPER_BASE:.0f}% clean) in 'paper (rel.)', ours relative to this base in 'rel.'."),
    ]
    return "\n\n".join(paragraphs) + "\n\n" + markdown(table, table.get("main_points", "n"))
