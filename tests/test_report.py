"""Scenario reports: summary numbers on a known input, plot data, and the files written."""

import json

import numpy as np
import pytest

from edgecc.scenario.report import (
    RequestRecord, accuracy_p99_points, all_fast_markdown, cdf_points, links_markdown, phase_usage, render_markdown, stages_markdown, summarize,
    usage_timeline, write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(i, latency, correct=2, total=2, oracle=None, sent=100):
    return {"request": i, "latency_ms": latency, "correct": correct, "total": total,
            "oracle_ms": oracle, "bytes_sent": sent}


# Five requests, one failed; decoded latencies 10, 20, 30, 40 (in shuffled order).
RECORDS = [rec(0, 30.0, oracle=5.0), rec(1, 10.0, correct=1, oracle=6.0), rec(2, None, correct=0),
           rec(3, 40.0, oracle=7.0), rec(4, 20.0, correct=0, oracle=8.0)]


def test_summary_numbers_by_hand():
    s = summarize(RECORDS)
    assert s.requests == 5
    assert s.decoded_fraction == pytest.approx(0.8)
    # linear percentiles of [10, 20, 30, 40]: position q/100 * 3
    assert s.p50_ms == pytest.approx(25.0)  # halfway between 20 and 30
    assert s.p95_ms == pytest.approx(38.5)  # 2.85 → 30 + 0.85·10
    assert s.p99_ms == pytest.approx(39.7)  # 2.97 → 30 + 0.97·10
    assert s.mean_ms == pytest.approx(25.0)
    assert s.accuracy == pytest.approx(100 * 5 / 8)  # 2+1+2+0 correct of 8 decoded images
    assert s.bytes_sent == 500  # failed request's bytes count too
    assert (s.failed, s.shed) == (1, 0)
    assert s.oracle_p50_ms == pytest.approx(6.5)  # [5, 6, 7, 8]
    assert s.oracle_p99_ms == pytest.approx(7.97)


def test_summary_of_all_failed():
    s = summarize([rec(0, None), rec(1, None)])
    assert s.decoded_fraction == 0.0
    assert (s.p50_ms, s.p99_ms, s.mean_ms, s.accuracy, s.oracle_p50_ms) == (None,) * 5


def test_records_accept_dataclasses_and_reject_nonsense():
    assert summarize([RequestRecord(0, 5.0, 1, 1)]).p50_ms == 5.0
    with pytest.raises(ValueError, match="correct"):
        RequestRecord(0, 5.0, correct=3, total=2)
    with pytest.raises(ValueError, match="latency_ms"):
        RequestRecord(0, float("nan"), 1, 1)
    with pytest.raises(TypeError):
        summarize([{"request": 0, "latency_ms": 1.0, "correct": 1, "total": 1, "extra": 1}])
    with pytest.raises(ValueError, match="outcome"):
        RequestRecord(0, None, 0, 1, outcome="lost")
    with pytest.raises(ValueError, match="shed request has no latency_ms"):
        RequestRecord(0, 5.0, 0, 1, outcome="shed")
    with pytest.raises(ValueError, match="decoded request needs latency_ms"):
        RequestRecord(0, None, 0, 1, outcome="decoded")


def test_shed_requests_are_counted_apart_from_failures():
    recs = [RequestRecord(0, 5.0, 1, 1), RequestRecord(1, None, 0, 1, outcome="shed"),
            RequestRecord(2, None, 0, 1, outcome="shed"), RequestRecord(3, None, 0, 1)]
    s = summarize(recs)
    assert (s.requests, s.failed, s.shed, s.decoded_fraction) == (4, 1, 2, 0.25)
    assert "| x | 4 | 25.0% | 1 | 2 |" in render_markdown({"x": s})


def test_stages_summarised_per_scheme():
    recs = [RequestRecord(i, 10.0, 1, 1, stages_ms={"encode": float(i), "workers": 5.0}) for i in range(1, 6)]
    recs.append(RequestRecord(9, None, 0, 1))
    s = summarize(recs)
    assert s.stages_ms == {"encode": {"p50": 3.0, "p99": pytest.approx(4.96)}, "workers": {"p50": 5.0, "p99": 5.0}}
    md = stages_markdown({"aicc": s, "old": summarize([RequestRecord(0, 1.0, 1, 1)])})
    assert "| scheme | encode | workers |" in md and "| aicc | 3.0 / 5.0 | 5.0 / 5.0 |" in md and "| old | — | — |" in md
    assert stages_markdown({"old": summarize([RequestRecord(0, 1.0, 1, 1)])}) == ""


def test_usage_over_time_and_by_phase():
    recs = [RequestRecord(0, 5.0, 1, 1, t_s=0.2, workers=[0, 1]), RequestRecord(1, 5.0, 1, 1, t_s=0.9, workers=[0, 2]),
            RequestRecord(2, 5.0, 1, 1, t_s=2.5, workers=[0, 2]), RequestRecord(3, None, 0, 1, t_s=2.6),
            RequestRecord(4, 5.0, 1, 1, t_s=3.1, workers=[1, 2])]
    u = usage_timeline(recs, 3)
    assert u["decoded"] == [2, 0, 1, 1]
    assert u["used_by_worker"] == [[2, 0, 1, 0], [1, 0, 0, 1], [1, 0, 1, 1]]
    assert phase_usage(recs, 1, [1.0, 3.0]) == [(0.0, 1.0, 2, 1), (1.0, 3.0, 1, 0), (3.0, float("inf"), 1, 1)]
    link = {"rate_mbit": 20.0, "burst": 25000, "queue_ms": 100.0,
            "events": [{"at_s": 1.0, "kind": "down"}, {"at_s": 3.0, "kind": "up"}]}
    measured = {"links": [{"worker": i, "configured": link if i == 1 else None, "bytes_to_worker": 2_000_000,
                           "started_at_s": 0.1 * i,
                           "bytes_from_worker": 100_000, "mean_mbit_to_worker": 4.0, "mean_mbit_from_worker": 0.2,
                           "peak_mbit_to_worker": 9.5, "peak_mbit_from_worker": 0.4,
                           "events_applied": [{"worker": 1, "kind": "down", "rate_mbit": None, "at_s": 1.0,
                                               "applied_at_s": 1.003}] if i == 1 else []} for i in range(3)]}
    md = links_markdown([None, link, None], {"aicc": measured}, {"aicc": recs}, {"aicc": [1, 2]},
                        ["Shaped in the kernel: rate."])
    assert "\n- Shaped in the kernel: rate.\n" in md
    assert "| aicc | 1 | 20 | down @1s (applied 1.00s) | 4.000 / 0.200 | 9.500 / 0.400 | 2.00 / 0.10 | 2 |" in md
    assert "| 2.00 / 0.10 | — |" in md  # worker 2: no master link (a scheme using fewer workers)
    assert "| aicc | 0 | unshaped |" in md
    # worker 1 started 0.1 s after the first: its phases are 0-1.1 s, 1.1-3.1 s, after 3.1 s
    assert "| scheme | worker started at s | before down | down to up | after up |" in md
    assert "| aicc | 0.10 | 1/2 | 0/1 | 1/1 |" in md


def test_cdf_points_level_off_at_decoded_fraction():
    xs, ys = cdf_points(RECORDS)
    np.testing.assert_array_equal(xs, [10.0, 20.0, 30.0, 40.0])
    np.testing.assert_allclose(ys, [0.2, 0.4, 0.6, 0.8])
    xs, ys = cdf_points([])
    assert len(xs) == len(ys) == 0


def test_accuracy_p99_points_skip_schemes_that_decoded_nothing():
    summaries = {"aicc": summarize(RECORDS), "uncoded": summarize([rec(0, None)])}
    pts = accuracy_p99_points(summaries)
    assert [p[0] for p in pts] == ["aicc"]
    assert pts[0][1:] == pytest.approx((39.7, 62.5))


def test_markdown_table():
    md = render_markdown({"aicc": summarize(RECORDS), "dead": summarize([rec(0, None)])}, "T")
    lines = md.splitlines()
    assert lines[0] == "# T"
    assert lines[2].startswith("| scheme |") and set(lines[3]) == {"|", "-"}
    assert lines[3].count("|") == lines[2].count("|")
    assert lines[4] == ("| aicc | 5 | 80.0% | 1 | 0 | 25.0 | 38.5 | 39.7 | 25.0 | 62.50 | 6.5 | 8.0 "
                        "| 500 |")
    assert lines[5].startswith("| dead | 1 | 0.0% | 1 | 0 | — |")


def test_write_report_files(tmp_path):
    results = {"aicc": RECORDS, "uncoded": [rec(i, 50.0 + i) for i in range(10)],
               "replication": [rec(0, None)]}
    out = tmp_path / "run"
    summaries = write_report(results, out, title="demo", meta={"name": "demo", "seed": 7})
    assert set(summaries) == set(results)

    doc = json.loads((out / "report.json").read_text())
    assert doc["scenario"] == {"name": "demo", "seed": 7}
    aicc = doc["schemes"]["aicc"]
    assert set(aicc) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "accuracy", "decoded_fraction",
                         "bytes_sent", "oracle_p50_ms", "oracle_p99_ms", "requests", "failed", "shed", "stages_ms"}
    assert aicc["p50_ms"] == pytest.approx(25.0) and aicc["requests"] == 5
    assert doc["schemes"]["replication"]["p99_ms"] is None
    assert "usage" not in doc  # no N in meta: no per-worker usage

    assert "| uncoded | 10 |" in (out / "report.md").read_text()
    for name in ("latency_cdf.png", "accuracy_vs_p99.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_all_fast_comparison():
    slow = summarize([rec(i, 100.0 + i) for i in range(101)])  # p99 199
    fast = summarize([rec(i, 50.0 + i / 2) for i in range(101)])  # p99 99.5
    md = all_fast_markdown({"aicc": slow, "aicc@all-fast": fast, "uncoded": slow})
    assert "| aicc | 150.0 | 75.0 | 199.0 | 99.5 | 2.00 | 29.8 |" in md  # 199 - (1.5 * 99.5 + 20)
    assert "| uncoded |" not in md  # no twin
    assert all_fast_markdown({"aicc": slow}) == ""


def test_usage_plot_written_when_meta_gives_N(tmp_path):
    recs = [RequestRecord(i, 5.0, 1, 1, t_s=i * 0.3, workers=[0, 1] if i < 5 else [0, 2]) for i in range(10)]
    link = {"rate_mbit": 20.0, "burst": 25000, "queue_ms": 100.0, "events": [{"at_s": 1.5, "kind": "down"}]}
    write_report({"aicc": recs}, tmp_path, meta={"N": 3, "workers": [{"link": None}, {"link": link}, {"link": None}]})
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["usage"]["aicc"]["used_by_worker"][1] == [4, 1, 0]  # worker 1 answers stop at 1.5 s
    assert (tmp_path / "usage_over_time.png").read_bytes()[:8] == PNG_MAGIC
