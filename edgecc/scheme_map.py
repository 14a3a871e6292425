"""The map of straggler-mitigation schemes: worst-straggler accuracy against the master's FLOPs per image
(`edgecc compare-map`; issue #35).

For each operating point (K, S) in MAPS, every scheme of results/schemes.json at that (K, S) is one point:
y = its worst-straggler accuracy (`overall_worst`), x = the master's FLOPs per classified image as a share
of the centralized CNN's (costs.cnn_baseline_flops) on a log scale. A master that does no arithmetic
(replication, uncoded: 0 FLOPs) is drawn at FLOOR and said so on the plot. Beside the points, a table of
worker FLOPs per worker call and bytes sent up per image. Two points are not rows of schemes.json:

- `local`: the master classifies alone with a centralized base (share 1 for the CNN, the MLP's FLOPs over
  the CNN's for the MLP), no workers; its accuracy is the base's (schemes.json "bases").
- the systematic encoder, a design of ours (not the paper's), measured by benchmarks/systematic_encoder.py
  into results/systematic-encoder.json: the master runs the centralized CNN up to its 100-feature layer
  φ, encodes E(α) = Σ_k ℓ_k(α) φ(x_k) (ℓ_k the Lagrange basis on K Chebyshev nodes β_k) at the workers'
  points α_n = cos(nπ/(N−1)); worker n applies the CNN's last affine layer (100 → 10) to E(α_n); any K
  answers decode the K outputs exactly by Lagrange interpolation (affine H_B, E of degree K−1: R = K).
  Its encode/decode math is here (systematic_*), so the benchmark and the tests share it.

- the light master, a design of ours (not the paper's), measured by benchmarks/light_master_poly.py into
  results/light-master.json: the master sends Lagrange-coded inputs X̃_n = Σ_k ℓ_k(α_n) x_k (a few
  multiply-adds per pixel) and every worker runs a whole classifier whose one activation is quadratic
  (degree 2), so f(E(α)) has degree 2(K−1) and any R = 2(K−1) + 1 answers decode the K outputs exactly;
  with one straggler N = R + 1 (16 at K = 8), more workers than the panel's N, which its row states.

Master FLOPs are the ones schemes.json records (ApproxIFER: Berrut encode + decode; AICC: the encoder
networks and E at N points, the ≤ 2·K·R·10-FLOP decode not counted). The learned code's row records
none; its master runs the parity encoder (a CL stack on the k images) and the decoder MLP, counted here
from edgecc.bench.costs.

Pure apart from write_map (which reads the JSON files and writes the PNG and the Markdown table);
matplotlib is imported on use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bench import costs
from .coding.lagrange import decode_weights
from .coding.schemes import OURS, SYSTEMATIC_LABEL

MAPS = ((8, 1), (2, 1))  # (K, S) of the map's panels
FLOOR = 1e-5  # where a master share below this (0 FLOPs: the master only forwards images) is drawn
FEATURES = 100  # the centralized CNN's last hidden layer (Base-MLP's l2)
CLASSES = 10
SYSTEMATIC = "systematic"  # the design's scheme name in the map
SYSTEMATIC_SCRIPT = "benchmarks/systematic_encoder.py"
LIGHT = "light-master"  # the light-master design's scheme name in the map
LIGHT_LABEL = f"light master, quadratic network on the workers {OURS}"
LIGHT_SCRIPT = "benchmarks/light_master_poly.py"
LEARNED_CODE_ARCH = "cl"  # the shipped `learned-code` model (learned-code-conv): a CL-stack parity encoder
ORDER = ("local", "replication", "uncoded", "approxifer", "learned-code", "aicc", SYSTEMATIC, LIGHT)  # the tables' order
NAMES = {"approxifer": "ApproxIFER", "aicc": "AICC", "learned-code": "learned code", "replication": "replication",
         "uncoded": "uncoded", "local": "local (master alone)", SYSTEMATIC: SYSTEMATIC_LABEL, LIGHT: LIGHT_LABEL}


# -- the systematic encoder (ours) -----------------------------------------------------------------
def systematic_points(K: int, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(β, α): the K data points, Chebyshev nodes cos((2k+1)π/(2K)), and the N workers' points, the
    Chebyshev extreme points cos(nπ/(N−1)) (the pair with the smallest worst Σ|decode weight| of the
    Chebyshev choices tried: 10.15 at K=8 N=9, 2.41 at K=2 N=3)."""
    if not 1 <= K <= N or N < 2:
        raise ValueError(f"need 1 <= K <= N and N >= 2, got K={K} N={N}")
    betas = np.cos((2 * np.arange(K) + 1) * np.pi / (2 * K))
    alphas = np.cos(np.arange(N) * np.pi / (N - 1))
    return betas, alphas


def systematic_encode_matrix(K: int, N: int) -> np.ndarray:
    """N×K float64: row n holds ℓ_k(α_n), the Lagrange basis on β evaluated at worker n's point."""
    betas, alphas = systematic_points(K, N)
    return decode_weights(betas, alphas)


def systematic_encode(feats: np.ndarray, K: int, N: int) -> np.ndarray:
    """(G, K, F) features φ(x_k) -> (G, N, F) coded inputs E(α_n), in the features' dtype."""
    L = systematic_encode_matrix(K, N).astype(feats.dtype)
    return np.einsum("nk,gkf->gnf", L, feats)


def systematic_decode_weights(K: int, N: int, answered: Sequence[int]) -> np.ndarray:
    """K×K float64: the K outputs at β from the answers of the K workers `answered`."""
    betas, alphas = systematic_points(K, N)
    if len(answered) != K:
        raise ValueError(f"the systematic design decodes from exactly K={K} answers, got {len(answered)}")
    return decode_weights(alphas[list(answered)], betas)


def systematic_costs(K: int, N: int) -> dict[str, float]:
    """Per classified image: the master's CNN trunk (the centralized CNN less its last affine layer), the
    encoding (N coded 100-vectors from K per group) and the decode (K×K weights on 10 logits); the worker's
    affine layer per call; bytes up (a float32 100-vector per worker) and down (10 float32 logits)."""
    trunk = costs.cnn_baseline_flops() - costs.linear_flops(FEATURES, CLASSES)
    encode = 2 * N * K * FEATURES / K
    decode = 2 * K * K * CLASSES / K
    return {"master_trunk_flops_per_image": trunk, "master_encode_flops_per_image": encode,
            "master_decode_flops_per_image": decode, "master_flops_per_image": trunk + encode + decode,
            "worker_flops": costs.linear_flops(FEATURES, CLASSES), "worker_calls_per_image": N / K,
            "up_bytes_per_image": N * FEATURES * 4 / K, "down_bytes_per_image": N * CLASSES * 4 / K}


# -- the map's points ------------------------------------------------------------------------------
def learned_code_master_flops(k: int, arch: str = LEARNED_CODE_ARCH) -> float:
    """Per image: the parity encoder on one group of k images and the decoder MLP ((k+1)·10 → (k+1)·10 →
    k·10 → k·10), over k."""
    n = (k + 1) * CLASSES
    decoder = costs.linear_flops(n, n) + costs.linear_flops(n, k * CLASSES) + costs.linear_flops(k * CLASSES, k * CLASSES)
    return (costs.coef_net_flops(arch, k) + decoder) / k


# Presentation per scheme name, as the rows of results/schemes.json name them: looked up, not compared with, so
# that the only code asking which scheme it runs stays in edgecc/schemes (tests/test_schemes_registry.py).
def _aicc_base(r: Mapping[str, Any]) -> str:
    label, *beyond = str(r["base"]).split(", ", 1)  # "K=2 G=1 P=1 CNN+CNN H_S[, anneal recipe (ours, ...)]"
    parts = label.split()  # (Scheme.label)
    return (f"{' '.join(parts[3:])} {' '.join(parts[1:3])}" if len(parts) >= 5 else label) + "".join(f", {b}" for b in beyond)


BASE_TEXT = {"aicc": _aicc_base, "approxifer": lambda r: f"{r['base']} (points {r.get('points')})"}
R_IS_K = frozenset({"approxifer", SYSTEMATIC})  # decoded from any K answers; their rows record no R
MASTER_COUNTED_HERE = {"learned-code": lambda r: learned_code_master_flops(int(r["K"]))}  # rows without master FLOPs
AICC_OURS = "aicc-ours"  # the plot's family of AICC models trained beyond the paper (He init, anneal recipe)
BEYOND_THE_PAPER = {"aicc": AICC_OURS}  # the family of a row whose base label carries OURS
COLOURS = {SYSTEMATIC: "C4", LIGHT: "C4", "aicc": "C2", AICC_OURS: "C4"}  # others: by base, blue for the MLP, red for the CNN
SIZES = {"local": 150, SYSTEMATIC: 90}


def _base_text(r: Mapping[str, Any]) -> str:
    """The base as the tables show it (AICC: its architecture and degrees; ApproxIFER: its points too)."""
    text = BASE_TEXT.get(r["scheme"])
    return text(r) if text else str(r.get("base", "") or "")


def _label(r: Mapping[str, Any]) -> str:
    return f"{NAMES.get(r['scheme'], r['scheme'])} {_base_text(r)}".strip()


def entry(r: Mapping[str, Any], source: str, cnn_flops: float) -> dict[str, Any]:
    """One scheme's line of the map from a schemes.json-style row."""
    master = r.get("master_flops_per_image")
    counted = MASTER_COUNTED_HERE.get(r["scheme"])
    if master is None and counted is not None:
        master, source = counted(r), source + "; master FLOPs from edgecc.bench.costs"
    share = None if master is None else master / cnn_flops
    worst = r.get("overall_worst")
    return {"scheme": r["scheme"], "label": _label(r), "base": r.get("base"), "K": r.get("K"), "N": r.get("N"),
            "R": r.get("R", r.get("K") if r["scheme"] in R_IS_K else None), "base_text": _base_text(r),
            "worst": worst, "mean": r.get("overall_mean"), "status": r.get("status"),
            "master_flops": master, "share": share,
            "x": None if share is None else max(share, FLOOR), "floored": share is not None and share < FLOOR,
            "worker_flops": r.get("worker_flops"), "worker_calls": r.get("worker_calls_per_image"),
            "up_bytes": r.get("up_bytes_per_image"), "source": source,
            "plotted": worst is not None and share is not None}


def local_entries(bases: Mapping[str, float], cnn_flops: float) -> list[dict[str, Any]]:
    """The master classifying alone with each centralized base: no workers, nothing sent."""
    flops = {"cnn": costs.cnn_baseline_flops(), "mlp": costs.mlp_baseline_flops()}
    out = []
    for base in ("cnn", "mlp"):
        if base in bases:
            row = {"scheme": "local", "base": base, "K": None, "N": 0, "overall_worst": bases[base],
                   "master_flops_per_image": flops[base], "worker_flops": 0, "up_bytes_per_image": 0.0}
            out.append(entry(row, f"bases.{base} of results/schemes.json; FLOPs from edgecc.bench.costs", cnn_flops))
    return out


def light_entries(light: Mapping[str, Any] | None, K: int, S: int, name: str, cnn_flops: float) -> list[dict[str, Any]]:
    """The light-master design's row at (K, S) from a loaded light-master.json (none when not measured there)."""
    out = []
    for r in (light or {}).get("rows", []):
        if r["K"] == K and r["S"] == S:
            row = {"scheme": LIGHT, "base": f"poly-mlp {light['model']['hidden']}", "K": K, "N": r["N"], "R": r["R"],
                   "overall_worst": r["worst_straggler_accuracy"], "overall_mean": r["mean_straggler_accuracy"],
                   "master_flops_per_image": r["master_flops_per_image"], "worker_flops": r["worker_flops_per_coded_image"],
                   "up_bytes_per_image": r["up_bytes_per_image"]}
            out.append(entry(row, f"{LIGHT_SCRIPT} ({name})", cnn_flops))
    return out


def map_points(schemes: Mapping[str, Any], K: int, S: int, systematic: Mapping[str, Any] | None = None,
               schemes_name: str = "results/schemes.json",
               systematic_name: str = "results/systematic-encoder.json",
               light: Mapping[str, Any] | None = None,
               light_name: str = "results/light-master.json") -> list[dict[str, Any]]:
    """Every scheme at (K, S): the rows of `schemes` (a loaded schemes.json; not the centralized ones),
    the systematic design's cell from `systematic` (a loaded systematic-encoder.json, or a "not measured"
    line when None or without that cell), and `local`; numbered from 1 in the order listed."""
    cnn_flops = costs.cnn_baseline_flops()
    out = [entry(r, f"{schemes_name} row {r.get('cell', '?')}", cnn_flops) for r in schemes["rows"]
           if r["scheme"] != "centralized" and r.get("K") == K and r.get("S") == S]
    cell = next((c for c in (systematic or {}).get("cells", []) if c["K"] == K and c["S"] == S), None)
    if cell is not None:
        out.append(entry({**cell, "scheme": SYSTEMATIC, "base": "cnn"}, f"{SYSTEMATIC_SCRIPT} ({systematic_name})", cnn_flops))
    else:
        N = K + S
        stub = {"scheme": SYSTEMATIC, "base": "cnn", "K": K, "S": S, "N": N, "R": K, "overall_worst": None,
                "status": f"not measured: run {SYSTEMATIC_SCRIPT}", **systematic_costs(K, N)}
        out.append(entry(stub, "edgecc.scheme_map.systematic_costs", cnn_flops))
    out += light_entries(light, K, S, light_name, cnn_flops)
    out += local_entries(schemes.get("bases", {}), cnn_flops)
    out.sort(key=lambda e: (ORDER.index(e["scheme"]) if e["scheme"] in ORDER else len(ORDER), str(e["base"]),
                            e["N"] or 0, e["label"]))
    for i, e in enumerate(out, 1):
        e["id"] = i
    return out


# -- output ----------------------------------------------------------------------------------------
def _num(v: Any, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _share(e: Mapping[str, Any]) -> str:
    if e["share"] is None:
        return "—"
    return "0" if e["share"] == 0 else f"{e['share']:.3g}"


def _acc(e: Mapping[str, Any]) -> str:
    if e["worst"] is None:
        return e["status"] or "—"
    return f"{100 * e['worst']:.2f}%" + (f" ({e['status']})" if e["status"] else "")


def markdown(panels: Sequence[tuple[int, int, Sequence[Mapping[str, Any]]]]) -> str:
    """The map's tables, one per (K, S)."""
    intro = ("Worst-straggler accuracy (over every straggler set of S workers) against the master's FLOPs per "
             "classified image, as a share of the centralized CNN's "
             f"({costs.cnn_baseline_flops():,} FLOPs/image; edgecc.bench.costs). Plot: [scheme-map.png](scheme-map.png); "
             "written by `edgecc compare-map`. Worker FLOPs are per worker call (one coded input); a scheme "
             "makes N/K calls per image (uncoded: 1). Up bytes: what the master sends per classified image. "
             f"Master shares below {FLOOR:g} (0 FLOPs: the master only forwards images) are drawn at {FLOOR:g}. "
             "Master FLOPs as results/schemes.json records them (ApproxIFER: Berrut encode and decode; AICC: its "
             "encoder networks and E at N points, not the ≤ 2·K·R·10-FLOP decode); the learned code's (its parity "
             "encoder and decoder MLP) and the systematic design's (the CNN up to its 100-feature layer, the "
             "encoding and the decode) counted from edgecc.bench.costs. "
             f"The {SYSTEMATIC_LABEL} is described in edgecc/scheme_map.py and measured by `{SYSTEMATIC_SCRIPT}`; "
             f"the {LIGHT_LABEL} likewise, measured by `{LIGHT_SCRIPT}` (it needs N = 2(K−1) + 2 workers for one "
             "straggler: its N column); "
             "`local` is the master classifying alone with a centralized base.")
    header = ("| # | scheme | base | K | N | R | worst-straggler accuracy | master FLOPs/img | share of CNN "
              "| worker FLOPs/call | up bytes/img | source |")
    lines = ["# Accuracy against master cost", "", intro, ""]
    for K, S, entries in panels:
        lines += [f"## K={K}, S={S}", "", header,
                  "|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for e in entries:
            base = e["base_text"]
            lines.append(f"| {e['id']} | {NAMES.get(e['scheme'], e['scheme'])} | {base} | {_num(e['K'], 'd')} "
                         f"| {_num(e['N'], 'd')} | {_num(e['R'], 'd')} | {_acc(e)} | {_num(e['master_flops'])} "
                         f"| {_share(e)} | {_num(e['worker_flops'])} | {_num(e['up_bytes'], ',.1f')} | {e['source']} |")
        lines.append("")
    return "\n".join(lines)


def _short(e: Mapping[str, Any]) -> str:
    """The plot table's name of a scheme (shorter than the Markdown's)."""
    return {"local": f"local {e['base']} (master alone)", SYSTEMATIC: "systematic enc. (ours) cnn",
            LIGHT: f"light master (ours), N={e['N']}"}.get(e["scheme"], e["label"].replace(f" {OURS}", " (ours)"))


MARKERS = {"approxifer": "s", "aicc": "o", AICC_OURS: "o", "learned-code": "D", "replication": "v", "uncoded": "^",
           "local": "*", SYSTEMATIC: "P", LIGHT: "X"}
FAMILY_NAMES = {**NAMES, AICC_OURS: "AICC, init or recipe beyond the paper's (ours)"}


def _family(e: Mapping[str, Any]) -> str:
    """The point's marker, colour and legend entry: its scheme, with AICC split by whether it is the paper's."""
    return BEYOND_THE_PAPER.get(e["scheme"], e["scheme"]) if OURS in str(e["base"]) else e["scheme"]


def plot(panels: Sequence[tuple[int, int, Sequence[Mapping[str, Any]]]], path: str | Path):
    """One row per (K, S): the points (numbered as in the table) and, beside them, the table of costs; written
    to `path`, and returned (a matplotlib Figure)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .fileio import atomic_write

    heights = [max(5.2, 0.17 * len(entries) + 1.2) for _, _, entries in panels]  # room for each cost table's rows
    fig = Figure(figsize=(15, sum(heights)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(panels), 2, width_ratios=(1, 1.25), height_ratios=heights)
    for row, (K, S, entries) in enumerate(panels):
        ax = fig.add_subplot(grid[row, 0])
        seen, spots = set(), {}
        for e in entries:
            if not e["plotted"]:
                continue
            fam, y = _family(e), 100 * e["worst"]
            size = SIZES.get(fam, 60)
            ax.scatter([e["x"]], [y], marker=MARKERS.get(fam, "o"), s=size,
                       color=COLOURS.get(fam, "C0" if e["base"] == "mlp" else "C3"),
                       label=FAMILY_NAMES.get(fam, fam) if fam not in seen else None, edgecolors="k", linewidths=0.5,
                       zorder=4 if size == 90 else 3, alpha=0.85 if size == 150 else 1.0)
            seen.add(fam)
            spots.setdefault((round(math.log10(e["x"]), 2), round(y, 1)), []).append(e)
        for group in spots.values():  # points on one spot (e.g. local CNN and the systematic design) share a label
            ax.annotate(",".join(str(e["id"]) for e in group), (group[0]["x"], 100 * group[0]["worst"]),
                        textcoords="offset points", xytext=(6, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(FLOOR / 4, max([10.0] + [3 * e["x"] for e in entries if e["plotted"]]))  # (K=8 G=7's encoder: 16×)
        ax.axvline(FLOOR, color="grey", lw=0.8, ls=":")
        ax.text(FLOOR * 0.85, 0.5, "floor: master does no arithmetic (0 FLOPs drawn here)", fontsize=7,
                rotation=90, transform=ax.get_xaxis_transform(), va="center", ha="right")
        ax.axvline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("master FLOPs per image / centralized CNN's (log)")
        ax.set_ylabel("worst-straggler accuracy (%)")
        ax.set_title(f"K={K}, S={S} (N={K + S}{'; AICC R=3 cells at N=4' if any(e['N'] == K + S + 1 for e in entries) else ''})"
                     " — red: CNN base, blue: MLP base, green: AICC, purple: ours", fontsize=9)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="best")  # (no corner is free of points on every panel)
        tab = fig.add_subplot(grid[row, 1])
        tab.axis("off")
        cells = [[str(e["id"]), _short(e), _num(e["N"], "d"),
                  f"{100 * e['worst']:.2f}" if e["worst"] is not None else (e["status"] or "—")[:22],
                  _share(e), _num(e["worker_flops"]), _num(e["up_bytes"], ",.0f")] for e in entries]
        t = tab.table(cellText=cells, colLabels=["#", "scheme", "N", "worst %", "master share", "worker FLOPs/call",
                                                 "up B/img"], loc="center", cellLoc="left")
        t.auto_set_font_size(False)
        t.set_fontsize(7)
        t.auto_set_column_width(list(range(7)))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return fig


def write_map(schemes_json: str | Path = "results/schemes.json", out_dir: str | Path = "results",
              systematic_json: str | Path | None = None) -> tuple[Path, Path]:
    """Read schemes.json (and systematic-encoder.json beside it unless given), write OUT_DIR/scheme-map.png
    and OUT_DIR/scheme-map.md; returns their paths."""
    import json

    from .fileio import atomic_write

    schemes_json = Path(schemes_json)
    schemes = json.loads(schemes_json.read_text())
    sys_path = Path(systematic_json) if systematic_json else schemes_json.parent / "systematic-encoder.json"
    systematic = json.loads(sys_path.read_text()) if sys_path.is_file() else None
    light_path = schemes_json.parent / "light-master.json"
    light = json.loads(light_path.read_text()) if light_path.is_file() else None
    panels = [(K, S, map_points(schemes, K, S, systematic, str(schemes_json), str(sys_path), light, str(light_path)))
              for K, S in MAPS]
    out = Path(out_dir)
    png, md = out / "scheme-map.png", out / "scheme-map.md"
    plot(panels, png)
    atomic_write(md, (markdown(panels) + "\n").encode())
    return png, md


__all__ = [
    "FLOOR",
    "MAPS",
    "learned_code_master_flops",
    "map_points",
    "markdown",
    "plot",
    "systematic_costs",
    "systematic_decode_weights",
    "systematic_encode",
    "systematic_encode_matrix",
    "systematic_points",
    "write_map",
]
