"""Short live versions of benchmarks/fuzz.py and benchmarks/soak.py (edgecc.fuzzing): real worker processes, real TCP.

Each asserts what the full benchmarks report: no crash, nothing lost or hung, correct results after.
Together they take well under a minute.
"""

from __future__ import annotations

from edgecc.fuzzing import fuzz_master, fuzz_worker, soak


async def test_fuzzed_worker_keeps_serving_correct_results():
    r = await fuzz_worker(1500, seed=0, check_every=500, concurrency=4, preauth_conns=2, preauth_mb=4)
    assert r["frames"] >= 1500
    assert not r["crashed"], r["exit_code"]
    # the worker survives anything, but an exception it did not expect means a frame was mishandled
    assert r["logged_unexpected_errors"] == 0, r["log_examples"]
    assert r["critical_findings"] == {}, r["finding_examples"]
    assert r["health_failures"] == 0 and r["correct_after"]
    assert r["checked_replies"].get("result_values_verified", 0) > 0
    assert r["fds"]["end"] <= r["fds"]["start"] + 2


async def test_master_survives_a_fuzzing_worker_and_decodes_correctly():
    # stall_s: a desynchronised fake reads on but answers nothing; the heartbeat drops it once it has taken a
    # ping and sent nothing for 3 beats (4-5 s), however many requests keep its socket draining
    r = await fuzz_master(200, seed=0, stall_s=10.0)
    assert not r["stalled"] and r["frames"] >= 200, (r["link_crashes"], r["link_stats"])
    assert r["exceptions"] == {} and r["link_crashes"] == [] and r["loop_errors"] == 0, (r["examples"], r["link_crashes"],
                                                                                           r["loop_error_examples"])
    assert set(r["outcomes"]) == {"correct"}, (r["outcomes"], r["examples"], r["fake_index"], r["link_stats"])
    assert r["outcomes"]["correct"] > 0 and r["correct_after"]
    assert r["findings"] == {}, r["finding_examples"]
    assert r["leaked_pending"] == 0
    assert r["honest_connects"] == [1, 1]  # fuzzing one link never disturbs the others
    assert r["master_stats"]["bad_results"] > 0  # the invalid results did arrive


async def test_soak_under_kills_and_pauses_loses_nothing():
    r = await soak(8, seed=0, in_flight=3, extra_down_prob=0.3, chaos_min_s=0.2, chaos_max_s=1.2, final_requests=5, log=False)
    q = r["requests"]
    assert q["submitted"] > 0 and q["decoded"] > 0
    assert q["lost"] == 0 and q["hung"] == 0 and q["crashed"] == 0
    assert q["submitted"] == q["decoded"] + q["failed"]
    assert q["decoded_wrong"] == 0 and q["prediction_mismatch"] == 0
    assert r["latency_s"]["within_bound"], r["latency_s"]
    m = r["master"]
    assert m["exceptions"] == {} and m["link_crashes"] == [] and m["loop_errors"] == 0 and m["leaked_pending"] == 0
    assert sum(r["chaos"]["events"].values()) > 0 and not r["chaos"]["restart_failures"]
    assert r["recovery"]["recovered"], r["recovery"]
    assert m["rss_mb"]["last"] - m["rss_mb"]["first"] < 200
