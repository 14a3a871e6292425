"""Who computes what: FLOPs, parameters and bytes per group, counted analytically from layer shapes.

Conventions: one multiply-add = 2 FLOPs; bias adds, activations and the uint8->float conversion
are not counted. A 3×3 convolution on a 28×28 map costs 2·Cin·Cout·9·784 FLOPs per image,
a Linear(in→out) 2·in·out. Backward ≈ 2× forward, so a training step ≈ 3× forward.
Bytes: the wire payload of the arrays (float32 = 4 bytes, uint8 images = 1 byte), plus the
msgpack/frame overhead of one request, which `frame_overhead` measures by encoding real frames.

Imports no torch: the table is cheap and testable.
"""

from __future__ import annotations

from typing import Any

from ..coding.schemes import Scheme, check_workers


PIX = 784
CLASSES = 10
L1, L2 = 200, 100
N_CONV3 = 6  # the CL stack's six 3×3 layers (DILATIONS in nets/blocks.py)
WIRE_BYTES = {"f4": 4, "f2": 2}


# -- layer costs -------------------------------------------------------------------------------
def conv3_flops(cin: int, cout: int) -> int:
    return 2 * cin * cout * 9 * PIX


def linear_flops(fan_in: int, fan_out: int) -> int:
    return 2 * fan_in * fan_out


def stack_flops(in_ch: int, width: int, out_ch: int = 1) -> int:
    """The CL stack: 3×3 in_ch→width, five 3×3 width→width, 1×1 width→out_ch (per image)."""
    return conv3_flops(in_ch, width) + (N_CONV3 - 1) * conv3_flops(width, width) + 2 * width * out_ch * PIX


def stack_params(in_ch: int, width: int, out_ch: int = 1) -> int:
    return (in_ch * width * 9 + width) + (N_CONV3 - 1) * (width * width * 9 + width) + (width + 1) * out_ch


def base_mlp_flops(maps: int = 1) -> int:
    """Base-MLP (Ω of H_S reads `maps` maps)."""
    return linear_flops(maps * PIX, L1) + linear_flops(L1, L2) + linear_flops(L2, CLASSES)


def base_mlp_params(maps: int = 1) -> int:
    return maps * PIX * L1 + L1 + L1 * L2 + L2 + L2 * CLASSES + CLASSES


def affine_flops(maps: int = 1) -> int:
    """The collapsed H_B / Ω: one (10×784) matrix-vector product (10 × maps·784 for H_S with several maps)."""
    return linear_flops(maps * PIX, CLASSES)


def affine_params(maps: int = 1) -> int:
    return maps * PIX * CLASSES + CLASSES


def coef_net_flops(arch: str, K: int, width: int | None = None, maps: int = 1) -> int:
    """One Γ_g or Λ_p network on one group of K images (a CL one `width` channels wide, the paper's 20·K),
    giving `maps` images (Λ_p of H_S with several maps)."""
    if arch == "cl":
        return stack_flops(K, width or 20 * K, maps)
    return linear_flops(K * PIX, K * PIX) + linear_flops(K * PIX, maps * PIX)


def coef_net_params(arch: str, K: int, width: int | None = None, maps: int = 1) -> int:
    if arch == "cl":
        return stack_params(K, width or 20 * K, maps)
    return (K * PIX * K * PIX + K * PIX) + (K * PIX * maps * PIX + maps * PIX)


def encoder_eval_flops(G: int, points: int) -> int:
    """E(α) = Σ_g C_g α^g at `points` points, given the coefficients."""
    return 2 * points * (G + 1) * PIX


def horner_flops(P: int, maps: int = 1) -> int:
    """Σ_p V_p ⊙ X̃^p by Horner's rule: P multiplies and P adds per pixel of each map."""
    return 2 * P * PIX * maps


def lambda_flops(s: Scheme) -> int:
    """Λ_0..Λ_P on one group (H_S)."""
    return (s.P + 1) * coef_net_flops(s.compute_arch, s.K, s.width, s.map_count)


def lambda_params(s: Scheme) -> int:
    return (s.P + 1) * coef_net_params(s.compute_arch, s.K, s.width, s.map_count)


def encoded_worker_flops(s: Scheme) -> int:
    """An encoded-placement worker on one encoded input: the collapsed affine map, after Horner's rule for H_S."""
    if s.computation == "hs":
        return affine_flops(s.map_count) + horner_flops(s.P, s.map_count)
    return affine_flops()


def hb_uncollapsed_flops(s: Scheme) -> int:
    """The H_B network as trained (CL stack without ReLU, then Base-MLP), one encoded input."""
    return (stack_flops(1, 20 * s.K) if s.compute_arch == "cl" else 0) + base_mlp_flops()


def decode_flops(K: int, R: int) -> int:
    """(K×R) Lagrange matrix times R result vectors of 10 logits."""
    return 2 * K * R * CLASSES


def cnn_baseline_flops() -> int:
    """The centralized CNN (CL stack width 40 with ReLU + Base-MLP) on ONE image."""
    return stack_flops(1, 40) + base_mlp_flops()


def mlp_baseline_flops() -> int:
    return base_mlp_flops()


def cnn_baseline_params() -> int:
    return stack_params(1, 40) + base_mlp_params()


def model_params(s: Scheme) -> int:
    """Parameters of AICC(s) (checked against SPEC §2: 2,218,197 for K=4 G=1 P=4 CL H_S)."""
    n = (s.G + 1) * coef_net_params(s.encoder, s.K, s.width)
    if s.computation == "hs":
        n += lambda_params(s) + base_mlp_params(s.map_count)
    else:
        n += (stack_params(1, 20 * s.K) if s.compute_arch == "cl" else 0) + base_mlp_params()
    return n


def master_encode_flops(s: Scheme, N: int) -> int:
    """Encoded placement, per group: Γ_0..Γ_G once, E at N points, and Λ_0..Λ_P for H_S."""
    f = (s.G + 1) * coef_net_flops(s.encoder, s.K, s.width) + encoder_eval_flops(s.G, N)
    if s.computation == "hs":
        f += lambda_flops(s)
    return f


def forward_flops(s: Scheme, points: int) -> int:
    """D at `points` points with the networks as trained (uncollapsed H), one group."""
    f = (s.G + 1) * coef_net_flops(s.encoder, s.K, s.width) + encoder_eval_flops(s.G, points)
    if s.computation == "hs":
        f += lambda_flops(s) + points * (horner_flops(s.P, s.map_count) + base_mlp_flops(s.map_count))
    else:
        f += points * hb_uncollapsed_flops(s)
    return f


def train_step_flops(s: Scheme, batch: int) -> int:
    """One training step (forward at β_1..β_K, backward ≈ 2× forward) on `batch` groups."""
    return 3 * batch * forward_flops(s, s.K)


def shared_worker_flops(s: Scheme, collapsed: bool) -> int:
    """Shared-dataset worker, per group: E(α_n) (+ Λ) and H. `collapsed=False` is what SharedCompute
    runs today (the torch model, H uncollapsed); `collapsed=True` what it could run (affine map)."""
    f = (s.G + 1) * coef_net_flops(s.encoder, s.K, s.width) + encoder_eval_flops(s.G, 1)
    if s.computation == "hs":
        f += lambda_flops(s) + horner_flops(s.P, s.map_count)
        f += affine_flops(s.map_count) if collapsed else base_mlp_flops(s.map_count)
    else:
        f += affine_flops() if collapsed else hb_uncollapsed_flops(s)
    return f


# -- frames ------------------------------------------------------------------------------------
def frame_overhead(s: Scheme, placement: str, groups: int, wire_dtype: str = "f4", req_id: int = 1000) -> dict[str, int]:
    """Bytes of one real Compute and one Result frame for `groups` groups, and how much of each is
    not array data (length prefix, msgpack map, keys, dtype/shape)."""
    import numpy as np

    from ..protocol.frames import encode_frame, pack_array
    from ..protocol.messages import Compute, Result

    if placement == "encoded":
        x = pack_array(np.zeros((groups, 28, 28), np.float32), wire_dtype)
        maps = (s.map_count,) if s.map_count > 1 else ()
        v = pack_array(np.zeros((groups, s.P + 1, *maps, 28, 28), np.float32), wire_dtype) if s.computation == "hs" else None
        up = Compute(req_id, x, v, None, None)
    else:
        up = Compute(req_id, None, None, pack_array(np.zeros((groups, s.K, 28, 28), np.uint8), "u1"), None)
    down = Result(req_id, pack_array(np.zeros((groups, CLASSES), np.float32), wire_dtype))
    up_frame, down_frame = len(encode_frame(up.to_wire())), len(encode_frame(down.to_wire()))
    up_data = groups * up_payload_per_worker(s, placement, wire_dtype)
    down_data = groups * CLASSES * WIRE_BYTES[wire_dtype]
    return {"groups": groups, "compute_frame": up_frame, "compute_overhead": up_frame - up_data,
            "result_frame": down_frame, "result_overhead": down_frame - down_data}


def up_payload_per_worker(s: Scheme, placement: str, wire_dtype: str = "f4") -> int:
    w = WIRE_BYTES[wire_dtype]
    if placement == "shared":
        return s.K * PIX  # uint8 images (sending dataset indices instead: 4·K bytes)
    return PIX * w + ((s.P + 1) * s.map_count * PIX * w if s.computation == "hs" else 0)


# -- the table ---------------------------------------------------------------------------------
def cost_row(s: Scheme, placement: str, N: int, wire_dtype: str = "f4", groups_per_request: int = 64) -> dict[str, Any]:
    """FLOPs, bytes and weights per group at the master, at each worker and on the wire."""
    check_workers(s, N)
    R = s.R
    w = WIRE_BYTES[wire_dtype]
    up = up_payload_per_worker(s, placement, wire_dtype)
    down = CLASSES * w
    fo = frame_overhead(s, placement, groups_per_request, wire_dtype)
    up_framed = up + fo["compute_overhead"] / groups_per_request
    down_framed = down + fo["result_overhead"] / groups_per_request
    dec = decode_flops(s.K, R)
    if placement == "encoded":
        master = master_encode_flops(s, N) + dec
        worker = encoded_worker_flops(s)
        worker_alt = worker
        master_weights = ((s.G + 1) * coef_net_params(s.encoder, s.K, s.width)
                          + (lambda_params(s) if s.computation == "hs" else 0)) * 4
        worker_weights = affine_params(s.map_count) * 4
    else:
        master = dec
        worker = shared_worker_flops(s, collapsed=False)
        worker_alt = shared_worker_flops(s, collapsed=True)
        master_weights = 0
        worker_weights = (model_params(s) + affine_params(s.map_count)) * 4  # SharedCompute gets the model and the affine map
    return {
        "scheme": s.label(), "scheme_dict": s.to_dict(), "placement": placement, "N": N, "R": R, "K": s.K,
        "wire_dtype": wire_dtype, "groups_per_request": groups_per_request,
        "flops": {
            "master": master, "master_decode": dec, "worker": worker, "worker_if_collapsed": worker_alt,
            "all_workers": N * worker,
            "centralized_cnn": s.K * cnn_baseline_flops(), "centralized_mlp": s.K * mlp_baseline_flops(),
        },
        "bytes": {
            "up_per_worker": up, "down_per_worker": down,
            "up_per_worker_framed": up_framed, "down_per_worker_framed": down_framed,
            "master_sent": N * up, "master_received": N * down, "master_received_needed": R * down,
            "wire_total": N * (up + down), "wire_total_framed": N * (up_framed + down_framed),
            "frame": fo,
        },
        "weights_bytes": {"master": master_weights, "worker": worker_weights},
        "params": model_params(s),
    }


TABLE_SCHEMES = {
    "K2 CNN+CNN H_B": Scheme(K=2, G=1),
    "K2 MLP+MLP H_B": Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp"),
    "K2 CNN+CNN H_S": Scheme(K=2, G=1, P=1, computation="hs"),
    "K4 G1 P4 CNN+CNN H_S": Scheme(K=4, G=1, P=4, computation="hs"),
}


def cost_table(Ns: tuple[int, ...] = (3, 10), wire_dtype: str = "f4", groups_per_request: int = 64) -> list[dict[str, Any]]:
    rows = []
    for name, s in TABLE_SCHEMES.items():
        for N in Ns:
            if N < s.R:
                continue
            for placement in ("encoded", "shared"):
                rows.append({"name": name, **cost_row(s, placement, N, wire_dtype, groups_per_request)})
    return rows
