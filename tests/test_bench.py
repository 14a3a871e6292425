"""The benchmark harness: the analytic cost table is right, and a tiny run has the documented structure.
No assertions on timing values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgecc.bench import BenchConfig, costs, render_markdown, run
from edgecc.coding.schemes import Scheme
from edgecc.nets.aicc import native_bf16

HB = Scheme(K=2, G=1)


def row(name: str, placement: str, N: int = 3) -> dict:
    return next(r for r in costs.cost_table() if r["name"] == name and r["placement"] == placement and r["N"] == N)


def test_parameter_counts_match_spec():
    assert costs.coef_net_params("cl", 2) == 73_001
    assert costs.model_params(Scheme(K=4, G=1, P=4, computation="hs")) == 2_218_197
    assert costs.model_params(Scheme(K=2, G=2)) == 469_754
    assert costs.base_mlp_params() == 178_110


@pytest.mark.parametrize("scheme", [Scheme(K=2, G=1), Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp"),
                                    Scheme(K=2, G=1, P=2, computation="hs")])
def test_parameter_counts_match_torch(scheme):
    from edgecc.nets import AICC

    assert costs.model_params(scheme) == sum(p.numel() for p in AICC(scheme).parameters())


def test_layer_flops():
    assert costs.conv3_flops(40, 40) == 2 * 40 * 40 * 9 * 784
    assert costs.linear_flops(784, 200) == 2 * 784 * 200
    assert costs.affine_flops() == 2 * 784 * 10
    # K=2 CL net: 3x3 2->40, five 3x3 40->40, 1x1 40->1
    assert costs.coef_net_flops("cl", 2) == 2 * 784 * 9 * (2 * 40 + 5 * 40 * 40) + 2 * 40 * 784
    assert costs.train_step_flops(HB, 64) == 3 * 64 * costs.forward_flops(HB, 2)


def test_hb_encoded_row():
    r = row("K2 CNN+CNN H_B", "encoded")
    assert r["flops"]["worker"] == 2 * 784 * 10
    assert r["flops"]["master"] == 2 * costs.coef_net_flops("cl", 2) + 2 * 3 * 2 * 784 + 2 * 2 * 2 * 10
    assert r["bytes"]["up_per_worker"] == 784 * 4
    assert r["bytes"]["down_per_worker"] == 10 * 4
    assert r["bytes"]["wire_total"] == 3 * (784 * 4 + 10 * 4)
    fo = r["bytes"]["frame"]
    assert fo["compute_frame"] == 64 * 784 * 4 + fo["compute_overhead"]
    assert 4 < fo["compute_overhead"] < 200 and 4 < fo["result_overhead"] < 200  # length prefix + msgpack map
    assert 784 * 4 < r["bytes"]["up_per_worker_framed"] < 784 * 4 + 4
    assert r["weights_bytes"]["worker"] == (784 * 10 + 10) * 4


def test_shared_and_hs_rows():
    sh = row("K2 CNN+CNN H_B", "shared")
    assert sh["flops"]["master"] == costs.decode_flops(2, 2)
    assert sh["bytes"]["up_per_worker"] == 2 * 784  # uint8 images
    assert sh["flops"]["worker"] > sh["flops"]["worker_if_collapsed"]  # SharedCompute runs H uncollapsed
    hs = row("K2 CNN+CNN H_S", "encoded")
    assert hs["bytes"]["up_per_worker"] == 784 * 4 * (1 + 2)  # X̃_n and V_0, V_1
    assert hs["flops"]["worker"] == 2 * 784 * 10 + 2 * 784
    k4 = [r for r in costs.cost_table() if r["name"].startswith("K4")]
    assert k4 and all(r["N"] >= r["R"] == 5 for r in k4)


def test_tiny_run_structure(tmp_path):
    cfg = BenchConfig(quick=True, repeats=1, min_time=0.0, matmul_n=64, batch=4, models=("mlp",))
    out = tmp_path / "bench.json"
    res = run(cfg, out, sections=("machine", "matmul", "master", "worker", "costs"))
    assert json.loads(out.read_text()) == res
    assert not res["meta"]["errors"]
    assert {"meta", "machine", "matmul", "master", "worker", "costs"} <= set(res)
    assert {"cpu_model", "cores", "torch", "numpy", "torch_threads"} <= set(res["machine"])
    assert {"torch_fp32", "torch_bf16", "numpy_fp32"} <= set(res["matmul"])
    assert [m["model"] for m in res["master"]["models"]] == ["mlp"]
    b = res["master"]["models"][0]["by_batch"][0]
    timed = {"encode", "payloads_encoded", "payloads_shared", "decode", "centralized_cnn"}
    assert timed | ({"encode_bf16"} if native_bf16("cpu") else set()) == set(b["seconds_per_group"])
    assert res["machine"]["bf16_native"] == native_bf16("cpu")
    assert res["worker"]["compute"] and res["worker"]["protocol"]
    one = res["master"]["models"][0]["one_group"]  # a lone group against its share of the batch, in alternating rounds
    assert one["groups"] == 4 and len(one["rounds"]) >= 5
    assert one["ratio_min"] <= one["ratio"] <= one["ratio_max"] and one["ratio"] > 0
    assert ("ratio_side_by_side" in one) == ((os.cpu_count() or 1) > 1)  # the master's way, where there is a core to spare
    assert one["after_idle"]["calls"] == 30 and 0 < one["after_idle"]["p50_s"] <= one["after_idle"]["p99_s"]
    md = render_markdown(res)
    assert "alternating rounds" in md
    assert "Who computes what" in md and "Master cost per group" in md and "| --- " not in md
    assert ("no native bf16 kernels" in md) == (not native_bf16("cpu"))


def test_latency_section_pairs_requests_over_rounds(tmp_path):
    """Real workers: each round pairs requests with in-process runs; the reported p50 is the rounds' median."""
    cfg = BenchConfig(quick=True, models=("mlp",), latency_requests=6, latency_rounds=2)
    res = run(cfg, tmp_path / "bench.json", sections=("latency",))
    assert not res["meta"]["errors"]
    (row,) = res["latency"]
    assert row["requests"] == 12 and row["rounds"] == 2 and len(row["overhead_ms"]["p50_rounds"]) == 2
    assert row["overhead_ms"]["p50"] == pytest.approx(float(np.median(row["overhead_ms"]["p50_rounds"])))
    assert row["e2e_ms"]["p50"] > 0 and row["inprocess_ms"]["encode"] > 0
    assert "rounds with fresh workers" in render_markdown(res)
    st = row["stages_p50_ms"]  # the e2e by stage: each measured, each a part of the whole
    assert set(st) == {"queue", "encode", "first_result", "rth_result", "decode", "rest"}
    assert 0 < st["first_result"] <= st["rth_result"] < row["e2e_ms"]["p50"] and st["encode"] > 0
    assert "Where a request's time went" in render_markdown(res)
    assert set(row["ping_after_idle_ms"]) == {"2", "20"} and all(v["p50"] > 0 for v in row["ping_after_idle_ms"].values())
    assert "ping p50 after 2 / 20 ms idle" in render_markdown(res)


def test_training_section_times_trains_own_step(monkeypatch):
    """The training rows time edgecc.train.train_step (what a run executes), fp32 and bf16 side by side."""
    import edgecc.train
    from edgecc.bench import harness

    calls = []
    real = edgecc.train.train_step
    monkeypatch.setattr(edgecc.train, "train_step", lambda *a: calls.append(a[6].precision) or real(*a))
    rows = harness.bench_training(BenchConfig(train_steps=1), {"torch_fp32": {"gflops": 100.0}, "torch_bf16": {"gflops": 200.0}})
    dtypes = harness.bench_precisions()  # bf16 only where the CPU runs it natively
    assert dtypes == (("fp32", "bf16") if native_bf16("cpu") else ("fp32",))
    assert [(r["name"], r["dtype"]) for r in rows] == [(m, d) for m in ("K2 CNN+CNN H_B", "K2 MLP+MLP H_B") for d in dtypes]
    assert [calls.count(d) for d in dtypes] == [2 * 3] * len(dtypes)  # two models × (2 warm-up rounds + 1 timed)
    for r in rows:
        assert r["steps"] == 1 and r["groups_per_s"] == pytest.approx(64 / r["step_s"])
        assert r["fraction_of_matmul"] == pytest.approx(r["achieved_gflops"] / (100.0 if r["dtype"] == "fp32" else 200.0))


def test_cli_runs_only_the_sections_asked_for(tmp_path):
    from click.testing import CliRunner

    from edgecc.cli import main

    out = tmp_path / "b.json"
    res = CliRunner().invoke(main, ["bench", "--quick", "--sections", "machine", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["machine"]["cores"] >= 1 and "end_to_end" not in data
    assert out.with_suffix(".md").is_file()
    bad = CliRunner().invoke(main, ["bench", "--sections", "machine,e2e", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown sections ['e2e']" in bad.output


def test_small_requests_section_compares_both_settings_on_real_workers(tmp_path):
    """Real workers: each concurrency has both settings measured in every round; one client never coalesces."""
    cfg = BenchConfig(quick=True, models=("mlp",), small_rounds=1, small_seconds=0.3)
    res = run(cfg, tmp_path / "bench.json", sections=("small_requests",))
    assert not res["meta"]["errors"], res["meta"]["errors"]
    rows = res["small_requests"]
    assert [r["concurrency"] for r in rows] == [1, 4, 16]
    for r in rows:
        for name in ("alone", "coalesced"):
            assert r[name]["images_per_s"] > 0 and r[name]["p99_ms"] >= r[name]["p50_ms"] > 0
        assert r["alone"]["requests_per_encoder_call"] == 1.0
        assert r["coalesced_over_alone"] == pytest.approx(r["coalesced"]["images_per_s"] / r["alone"]["images_per_s"])
    assert rows[0]["coalesced"]["requests_per_encoder_call"] == 1.0  # a lone client never waits for company
    assert rows[-1]["coalesced"]["requests_per_encoder_call"] > 1.0
    assert "Small requests under load" in render_markdown(res)
