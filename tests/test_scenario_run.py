"""`edgecc scenario run` end to end: real worker processes with injected delays, every scheme."""

import json
import subprocess
import sys

import pytest

SCENARIO = """
name = "tiny"
seed = 11
images = "sample"
requests = 12
groups_per_request = 2
schemes = ["aicc", "uncoded", "replication", "learned-code", "local"]
timeout_s = 10.0
[options.aicc]
model = "{model}"
placement = "encoded"
[options.learned-code]
model = "{lc}"
[arrival]
process = "closed"
concurrency = 2
[defaults]
latency = {{ dist = "constant", value = 0.002 }}
[[workers]]
[[workers]]
latency = {{ dist = "exponential", mean = 0.05 }}
[[workers]]
"""


@pytest.fixture
def scenario_file(tmp_path, tiny_models):
    f = tmp_path / "tiny.toml"
    f.write_text(SCENARIO.format(model=tiny_models["hb"], lc=tiny_models["lc"]))
    return f


def run(file, out):
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(file), "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "tiny" / "report.json").read_text()), json.loads((out / "tiny" / "requests.json").read_text())


def test_scenario_reports_every_scheme_with_the_same_injected_delays(scenario_file, tmp_path):
    report, requests = run(scenario_file, tmp_path / "a")
    assert set(report["schemes"]) == {"aicc", "uncoded", "replication", "learned-code", "local"}
    for name, s in report["schemes"].items():
        assert s["requests"] == 12 and s["decoded_fraction"] == 1.0, name
        for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "accuracy", "bytes_sent", "oracle_p99_ms"):
            assert s[key] is not None, (name, key)
    # the oracle is a pure function of the seed: AICC's R-th fastest of 3 never waits on the straggler,
    # nor does the learned code's k-th fastest of k+1
    assert all(r["oracle_ms"] == pytest.approx(2.0) for r in requests["aicc"])
    assert [r["oracle_ms"] for r in requests["learned-code"]] == [r["oracle_ms"] for r in requests["aicc"]]
    # uncoded uses workers 0 and 1 and must wait for the straggler (worker 1)
    assert all(r["oracle_ms"] >= 2.0 for r in requests["uncoded"])
    assert any(r["oracle_ms"] > 2.0 for r in requests["uncoded"])
    # byte counts per scheme: 3 workers get one 28x28 float32 image per group for AICC, 2 for uncoded,
    # none for local (the master classifies alone, and nothing waits on a worker)
    assert report["schemes"]["aicc"]["bytes_sent"] > report["schemes"]["uncoded"]["bytes_sent"]
    assert report["schemes"]["local"]["bytes_sent"] == 0 and report["scenario"]["master_stats"]["local"]["workers_used"] == 0
    assert all(r["oracle_ms"] == 0.0 and r["workers"] == [] for r in requests["local"])
    assert report["scenario"]["options"]["aicc"]["placement"] == "encoded" and report["scenario"]["K"] == 2
    # per-request bytes are each request's own frames (2 in flight: neither counts the other's), so they
    # add up exactly to what the master put on the wire, the unmeasured warm-up request aside
    for name, s in report["schemes"].items():
        master = report["scenario"]["master_stats"][name]
        assert s["bytes_sent"] + master["warmup_bytes_sent"] == master["bytes_sent"], name
        assert all(r["bytes_sent"] <= 3 * 2 * 784 * 4 + 3 * 512 for r in requests[name]), name  # 2 groups, 3 frames
        assert (s["failed"], s["shed"]) == (0, 0)
    # which workers each decode used, and when the request arrived
    assert all(len(r["workers"]) == 2 and r["t_s"] >= 0 for r in requests["aicc"])
    # where each request's time went at the master; the stages fit inside its latency
    for r in requests["aicc"]:
        st = r["stages_ms"]
        assert set(st) == {"queue", "encode", "workers", "decode"} and sum(st.values()) <= r["latency_ms"] + 0.01  # rounding
    assert sum(report["usage"]["aicc"]["decoded"]) == 12
    for png in ("latency_cdf.png", "accuracy_vs_p99.png"):
        assert (tmp_path / "a" / "tiny" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| aicc |" in (tmp_path / "a" / "tiny" / "report.md").read_text()

    report2, requests2 = run(scenario_file, tmp_path / "b")  # same seed: same delays, same accuracy
    for name in requests:
        assert [r["oracle_ms"] for r in requests[name]] == [r["oracle_ms"] for r in requests2[name]]
        if name != "learned-code":  # its degraded decode depends on which 2 of 3 answers arrive first, not on the seed
            assert report["schemes"][name]["accuracy"] == report2["schemes"][name]["accuracy"]


def test_bad_scenario_file_is_a_clear_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('name = "bad"\nN = 3\n[defaults]\nlatency = { dist = "exponential", mean = -1.0 }\n')
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "defaults.latency.mean" in r.stderr and "Traceback" not in r.stderr


OVERLOAD = """
name = "overload"
requests = 300
schemes = ["aicc"]
timeout_s = 0.25
N = 3
[options.aicc]
model = "{model}"
[arrival]
process = "poisson"
rate = 3000.0
[defaults]
latency = {{ dist = "constant", value = 0.005 }}
"""


def test_overload_is_shed_and_counted_within_deadlines(tmp_path, tiny_models):
    """Far past the master's capacity: requests are shed (counted apart from failures), and a deadline
    counts from arrival, so no decoded request took longer than it."""
    f = tmp_path / "overload.toml"
    f.write_text(OVERLOAD.format(model=tiny_models["hb"]))
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "scenario", "run", str(f), "--out", str(tmp_path), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((tmp_path / "overload" / "report.json").read_text())["schemes"]["aicc"]
    rows = json.loads((tmp_path / "overload" / "requests.json").read_text())["aicc"]
    assert s["shed"] > 0 and s["shed"] == sum(x["outcome"] == "shed" for x in rows)
    assert s["failed"] + s["shed"] + round(s["decoded_fraction"] * 300) == 300
    assert all(x["bytes_sent"] == 0 for x in rows if x["outcome"] == "shed")  # nothing sent for a shed request
    # the master ends every request by its deadline; 100 ms of slack for a loaded 2-core CI machine
    assert max(x["latency_ms"] for x in rows if x["outcome"] == "decoded") <= 250 + 100
    assert "| aicc | 300 |" in (tmp_path / "overload" / "report.md").read_text()
