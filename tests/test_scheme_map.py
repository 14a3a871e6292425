"""edgecc.scheme_map (`edgecc compare-map`): the map's points from a small synthetic schemes.json, its PNG and
Markdown; and the systematic encoder's decode (ours, not the paper's) is exact from every K of the N workers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecc.bench import costs
from edgecc.scheme_map import (
    FLOOR,
    learned_code_master_flops,
    map_points,
    systematic_costs,
    systematic_decode_weights,
    systematic_encode,
    systematic_points,
    write_map,
)

CNN = costs.cnn_baseline_flops()


def _schemes() -> dict:
    return {"table": "schemes", "bases": {"mlp": 0.89, "cnn": 0.92}, "rows": [
        {"scheme": "centralized", "base": "cnn", "K": 1, "S": 0, "N": 1, "overall_worst": 0.92, "cell": "base-cnn"},
        {"scheme": "approxifer", "base": "cnn", "K": 8, "S": 1, "N": 9, "points": "n", "overall_worst": 0.5,
         "overall_mean": 0.6, "worker_flops": CNN, "master_flops_per_image": 14272.0, "up_bytes_per_image": 3528.0,
         "cell": "approxifer-cnn-K8-S1-n"},
        {"scheme": "replication", "base": "mlp", "K": 8, "S": 1, "N": 9, "overall_worst": 0.7, "worker_flops": 355600,
         "master_flops_per_image": 0, "up_bytes_per_image": 3528.0, "cell": "replication-mlp-K8-S1"},
        {"scheme": "aicc", "base": "K=8 G=7 P=1 CNN+CNN H_B", "K": 8, "S": 1, "N": 9, "R": 8, "status": "not trained",
         "overall_worst": None, "worker_flops": 15680, "master_flops_per_image": 2 * CNN, "up_bytes_per_image": 3528.0,
         "cell": "aicc-k8-r8-hb-g7p1"},
        {"scheme": "aicc", "base": "K=2 G=1 P=1 CNN+CNN H_B", "K": 2, "S": 1, "N": 3, "R": 2, "overall_worst": 0.88,
         "worker_flops": 15680, "master_flops_per_image": CNN, "up_bytes_per_image": 4704.0, "cell": "aicc-t2-cnn+cnn-hb"},
        {"scheme": "learned-code", "base": "mlp", "K": 2, "S": 1, "N": 3, "overall_worst": 0.85, "worker_flops": 355600,
         "master_flops_per_image": None, "up_bytes_per_image": 4704.0, "cell": "learned-code"},
        {"scheme": "approxifer", "base": "cnn", "K": 4, "S": 1, "N": 5, "overall_worst": 0.6, "cell": "elsewhere"},
    ]}


def _systematic() -> dict:
    return {"cells": [{"K": 8, "S": 1, "N": 9, "R": 8, "overall_worst": 0.92, "overall_mean": 0.92,
                       **systematic_costs(8, 9)}]}


def test_points_at_k8_s1_have_the_right_shares_and_floor():
    pts = {(e["scheme"], e["base"]): e for e in map_points(_schemes(), 8, 1, _systematic())}
    assert set(pts) == {("approxifer", "cnn"), ("replication", "mlp"), ("aicc", "K=8 G=7 P=1 CNN+CNN H_B"),
                        ("systematic", "cnn"), ("local", "cnn"), ("local", "mlp")}
    a = pts["approxifer", "cnn"]
    assert a["share"] == pytest.approx(14272 / CNN) and a["x"] == a["share"] and a["plotted"] and a["R"] == 8
    r = pts["replication", "mlp"]
    assert r["share"] == 0 and r["x"] == FLOOR and r["floored"] and r["plotted"]
    k8 = pts["aicc", "K=8 G=7 P=1 CNN+CNN H_B"]
    assert not k8["plotted"] and k8["status"] == "not trained" and k8["share"] == pytest.approx(2.0)
    s = pts["systematic", "cnn"]
    assert s["worst"] == 0.92 and s["source"].startswith("benchmarks/systematic_encoder.py")
    assert s["master_flops"] == pytest.approx(CNN - 2000 + 2 * 9 * 100 + 2 * 8 * 10)
    assert s["worker_flops"] == 2000 and s["up_bytes"] == pytest.approx(9 * 400 / 8)
    assert pts["local", "cnn"]["share"] == 1 and pts["local", "cnn"]["worst"] == 0.92
    assert pts["local", "mlp"]["share"] == pytest.approx(costs.mlp_baseline_flops() / CNN)
    assert pts["local", "mlp"]["worst"] == 0.89 and pts["local", "mlp"]["up_bytes"] == 0


def test_points_at_k2_s1_count_the_learned_codes_master_and_mark_an_unmeasured_design():
    pts = {e["scheme"]: e for e in map_points(_schemes(), 2, 1, _systematic())}
    assert set(pts) == {"aicc", "learned-code", "systematic", "local"}
    lc = pts["learned-code"]
    assert lc["master_flops"] == pytest.approx(learned_code_master_flops(2)) and lc["plotted"]
    assert lc["master_flops"] == pytest.approx((costs.stack_flops(2, 40) + 2 * (30 * 30 + 30 * 20 + 20 * 20)) / 2)
    assert pts["systematic"]["worst"] is None and not pts["systematic"]["plotted"]
    assert "not measured" in pts["systematic"]["status"]
    assert [e["id"] for e in map_points(_schemes(), 2, 1)] == [1, 2, 3, 4, 5]


def test_write_map_writes_a_png_and_a_table(tmp_path):
    src = tmp_path / "schemes.json"
    src.write_text(json.dumps(_schemes()))
    (tmp_path / "systematic-encoder.json").write_text(json.dumps(_systematic()))
    png, md = write_map(src, tmp_path / "out")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "## K=8, S=1" in text and "## K=2, S=1" in text
    assert "not trained" in text and "systematic encoder (ours, not the paper's)" in text
    assert "row approxifer-cnn-K8-S1-n" in text and "92.00%" in text


def test_every_plotted_point_is_inside_its_panel(tmp_path):
    """A master dearer than the centralized CNN (the K=8 G=7 encoder: 16×) is drawn, not clipped off the axis."""
    from edgecc.scheme_map import plot

    schemes = _schemes()
    trained = {**schemes["rows"][3], "status": None, "overall_worst": 0.545, "master_flops_per_image": 16 * CNN}
    schemes["rows"][3] = trained
    panels = [(8, 1, map_points(schemes, 8, 1, _systematic())), (2, 1, map_points(schemes, 2, 1))]
    fig = plot(panels, tmp_path / "map.png")
    for ax, (_, _, entries) in zip([a for a in fig.axes if a.get_xscale() == "log"], panels):
        lo, hi = ax.get_xlim()
        xs = [e["x"] for e in entries if e["plotted"]]
        assert xs and all(lo < x < hi for x in xs), (lo, hi, xs)
    assert 16 in [e["share"] for e in panels[0][2]]


def test_the_command_writes_the_map(tmp_path):
    from edgecc.cli import main

    src = tmp_path / "schemes.json"
    src.write_text(json.dumps(_schemes()))
    res = CliRunner().invoke(main, ["compare-map", "--schemes", str(src), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "scheme-map.png").is_file() and (tmp_path / "scheme-map.md").is_file()


@pytest.mark.parametrize("K,N", [(8, 9), (2, 3), (4, 6)])
def test_the_systematic_decode_is_exact_from_every_k_workers(K, N):
    rng = np.random.default_rng(K * 100 + N)
    feats = rng.random((5, K, 100), dtype=np.float32) * 3  # φ(x_k): post-ReLU features, no CNN needed
    W3 = (rng.standard_normal((10, 100)) * 0.1).astype(np.float32)
    b3 = rng.standard_normal(10).astype(np.float32)
    want = feats @ W3.T + b3  # the affine layer on each image's features
    out = (systematic_encode(feats, K, N) @ W3.T + b3).astype(np.float32)  # each worker's float32 answer
    assert systematic_encode(feats, K, N).dtype == np.float32
    for answered in itertools.combinations(range(N), K):
        W = systematic_decode_weights(K, N, answered)
        got = np.einsum("kr,grv->gkv", W, out[:, list(answered)].astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * np.abs(W).sum(axis=1).max() * np.abs(want).max())
        assert (got.argmax(-1) == want.argmax(-1)).all()


def test_the_systematic_points():
    betas, alphas = systematic_points(8, 9)
    assert np.allclose(alphas, np.cos(np.arange(9) * np.pi / 8))
    assert np.allclose(betas, np.cos((2 * np.arange(8) + 1) * np.pi / 16))
    worst = max(np.abs(systematic_decode_weights(8, 9, a)).sum(axis=1).max() for a in itertools.combinations(range(9), 8))
    assert worst == pytest.approx(10.153, abs=1e-3)
    with pytest.raises(ValueError):
        systematic_decode_weights(2, 3, [0])


def test_the_light_master_design_is_a_point_with_its_own_N(tmp_path):
    """results/light-master.json's row at (K, S) joins the map with the N it needs (R + S), its master share tiny."""
    import json

    from edgecc.bench import costs
    from edgecc.scheme_map import LIGHT, map_points

    light = {"model": {"hidden": 64}, "rows": [
        {"K": 8, "S": 1, "N": 16, "R": 15, "worst_straggler_accuracy": 0.85, "mean_straggler_accuracy": 0.86,
         "master_flops_per_image": 25388.0, "worker_flops_per_coded_image": 100.0, "up_bytes_per_image": 6272.0}]}
    schemes = {"rows": [], "bases": {"cnn": 0.9}}
    (point,) = [e for e in map_points(schemes, 8, 1, light=light) if e["scheme"] == LIGHT]
    assert point["N"] == 16 and point["R"] == 15 and point["worst"] == 0.85 and point["plotted"]
    assert point["share"] == 25388.0 / costs.cnn_baseline_flops()
    assert not [e for e in map_points(schemes, 2, 1, light=light) if e["scheme"] == LIGHT]  # no K=2 row: no point
