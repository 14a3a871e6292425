"""`edgecc scenario sweep` (edgecc.scenario.sweep): the table, the saturation rule, one live sweep."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgecc.errors import ConfigError
from edgecc.scenario.spec import load_scenario
from edgecc.scenario.sweep import latency_row, rate_scenario, saturation


def _rec(i, ms, outcome=None):
    return {"request": i, "latency_ms": ms, "correct": 2, "total": 2, "outcome": outcome}


def test_latency_row_counts_outcomes_and_takes_percentiles_of_decoded_requests_only():
    recs = [_rec(i, float(i + 1)) for i in range(100)] + [_rec(100, None, "shed"), _rec(101, None, "failed")]
    row = latency_row(recs)
    assert row["requests"] == 102 and row["decoded"] == 100
    assert row["outcomes"] == {"decoded": 100, "shed": 1, "failed": 1}
    assert row["p50_ms"] == pytest.approx(50.5) and row["p99_ms"] == pytest.approx(99.01)
    assert row["p999_ms"] <= 100.0
    assert latency_row([_rec(0, None, "shed")])["p99_ms"] is None


def _row(rate, p99, frac=1.0):
    return {"rate": rate, "p99_ms": p99, "decoded_fraction": frac}


@pytest.mark.parametrize("rows, sustained, saturated", [
    ([_row(10, 5), _row(50, 20), _row(100, 49)], 100, None),           # within 10x throughout
    ([_row(10, 5), _row(50, 20), _row(100, 51)], 50, 100),             # p99 past 10x the unloaded p99
    ([_row(10, 5), _row(50, 6, frac=0.9), _row(100, 7)], 10, 50),      # fast, but dropping requests
    ([_row(10, None, frac=0.0), _row(50, 6)], None, 10),               # nothing decoded at all
])
def test_saturation_is_the_first_rate_past_the_rule(rows, sustained, saturated):
    s = saturation(rows)
    assert s["sustained_rate"] == sustained and s["saturated_at_rate"] == saturated


def test_rate_scenario_makes_open_loop_arrivals(tmp_path):
    sc = load_scenario("scenarios/load-n3.toml")
    r = rate_scenario(sc, 50.0, 4.0)
    assert r.arrival.process == "poisson" and r.arrival.rate == 50.0 and r.requests == 200
    assert r.workers == sc.workers and r.seed == sc.seed and r.name == "load-n3@50"
    with pytest.raises(ConfigError, match="rates must be > 0"):
        rate_scenario(sc, 0.0, 4.0)


SCENARIO = """
name = "tiny-load"
seed = 3
images = "sample"
requests = 10
schemes = ["aicc", "uncoded"]
timeout_s = 5.0
[options.aicc]
model = "{model}"
[arrival]
process = "poisson"
rate = 10.0
[defaults]
latency = {{ dist = "constant", value = 0.002 }}
[[workers]]
[[workers]]
latency = {{ dist = "constant", value = 0.030 }}
[[workers]]
"""


def test_a_live_sweep_writes_table_plot_and_one_report_per_rate(tmp_path, tiny_models):
    f = tmp_path / "tiny-load.toml"
    f.write_text(SCENARIO.format(model=tiny_models["hb"]))
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "sweep", str(f), "--rates", "20,5",
                        "--duration", "1.5", "--out", str(tmp_path / "o"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    d = tmp_path / "o" / "tiny-load-sweep"
    res = json.loads((d / "sweep.json").read_text())
    assert res["rates"] == [5.0, 20.0]
    for scheme in ("aicc", "uncoded"):
        rows = res["schemes"][scheme]
        assert [row["rate"] for row in rows] == [5.0, 20.0]
        assert [row["requests"] for row in rows] == [20, 30]  # max(20, rate x duration)
        assert all(row["decoded"] == row["requests"] for row in rows)
    # uncoded waits for the 30 ms worker, AICC decodes from the two fast ones
    assert res["schemes"]["uncoded"][0]["p50_ms"] > 30 > res["schemes"]["aicc"][0]["p50_ms"]
    assert (d / "rate-5" / "report.json").exists() and (d / "rate-20" / "requests.json").exists()
    assert (d / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| aicc | 5 |" in (d / "sweep.md").read_text()
    # where the CPU went at each rate, measured: the master's encode threads, its event loop, the worker processes
    for row in res["schemes"]["aicc"]:
        c = row["cpu_cores"]
        assert c["encoder"] > 0 and c["event_loop"] > 0 and c["workers"] > 0, c
        assert c["encoder"] + c["event_loop"] + c["workers"] <= res["cpus"] + 0.5
    assert "| scheme | requests/s | encoder | event loop | workers | total |" in (d / "sweep.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "sweep", str(f), "--rates", "5,x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "expected numbers separated by commas" in bad.stderr
