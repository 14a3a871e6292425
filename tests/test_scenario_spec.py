"""Scenario files: parsing, defaults, validation messages, and every shipped scenario."""

from pathlib import Path

import numpy as np
import pytest

from edgecc.errors import ConfigError
from edgecc.scenario.latency import Constant, CrashAt, Exponential, ShiftedExponential, Pareto
from edgecc.scenario.spec import DEFAULT_SCHEMES, LinkSpec, MIN_BURST, find_line, load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

FULL = """\
name = "full"
seed = 7
images = "sample"
requests = 200
groups_per_request = 2
schemes = ["aicc", "uncoded"]
K = 2
timeout_s = 2.5

[options.aicc]
model = "default"
placement = "shared"
byzantine = 0

[arrival]
process = "poisson"
concurrency = 1
rate = 50.0

[defaults]
latency = { dist = "constant", value = 0.005 }
link = { rate_mbit = 100 }

[[workers]]
latency = { dist = "exponential", mean = 0.050 }
failure = { kind = "crash_at", at_s = 2.0 }
slowdown = 2.0

[[workers]]

[[workers]]
link = { rate_mbit = 2.5, burst = 4000, down_at_s = [3.0, 9.0], up_at_s = [5.0], rate_changes = [{ at_s = 1.0, rate_mbit = 0.5 }] }
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_full_file(tmp_path):
    s = load_scenario(write(tmp_path, FULL))
    assert (s.name, s.seed, s.N, s.requests, s.groups_per_request) == ("full", 7, 3, 200, 2)
    assert (s.schemes, s.K, s.timeout_s) == (("aicc", "uncoded"), 2, 2.5)
    # every scheme gets all its own options: those the file sets, the defaults of the rest
    assert s.scheme_options("aicc") == {"model": "default", "placement": "shared", "wire_dtype": "f4",
                                        "encode_precision": "auto", "byzantine": 0, "tolerance": 0.01,
                                        "policy": "bound", "points": "chosen"}
    assert s.scheme_options("uncoded") == {"model": "default-mlp", "wire_dtype": "f4"}
    assert (s.arrival.process, s.arrival.rate) == ("poisson", 50.0)
    w0, w1, w2 = s.workers
    assert (w0.latency, w0.failures, w0.slowdown, w0.link) == (
        Exponential(0.05), (CrashAt(2.0),), 2.0, LinkSpec(100.0))
    assert (w1.latency, w1.failures, w1.slowdown) == (Constant(0.005), (), 1.0)
    assert w2.link == LinkSpec(2.5, 4000, 100.0, ((3.0, 5.0), (9.0, None)), ((1.0, 0.5),))
    assert [(e.at_s, e.kind, e.rate_mbit) for e in w2.link.events()] == [
        (1.0, "rate", 0.5), (3.0, "down", None), (5.0, "up", None), (9.0, "down", None)]
    assert s.has_links
    assert s.source == str(tmp_path / "s.toml")


def test_defaults_and_N_only(tmp_path):
    s = load_scenario(write(tmp_path, 'N = 4\n[defaults]\nlatency = { dist = "pareto", '
                                      'scale = 0.005, alpha = 1.5 }\n', "my-run.toml"))
    assert s.name == "my-run" and s.N == 4 and s.schemes == DEFAULT_SCHEMES
    assert all(w.latency == Pareto(0.005, 1.5) for w in s.workers)
    assert (s.scheme_options("aicc")["model"], s.images, s.scheme_options("aicc")["placement"], s.arrival.process) == (
        "default", "sample", "encoded", "closed")
    assert s.K is None and s.group_size() == 2  # the shipped AICC model's K


def test_behaviours_are_per_worker_and_deterministic(tmp_path):
    p = write(tmp_path, FULL)
    a, b = load_scenario(p).behaviours(), load_scenario(p).behaviours()
    assert [x.worker_index for x in a] == [0, 1, 2]
    assert [x.delay(5, 0.0) for x in a] == [x.delay(5, 0.0) for x in b]
    assert a[0].delay(5, 0.0) == 2.0 * Exponential(0.05).sample(
        np.random.default_rng([7, 0, 5, 0]), 5)  # slowdown applied
    assert a[0].delay(6, 3.0) is None  # crashed at 2 s


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "trace.txt").write_text("5\n")
    p = write(tmp_path / "sub", 'N = 1\nimages = "/abs/x.npz"\nschemes = ["aicc", "learned-code"]\n'
                                '[options.aicc]\nmodel = "m.safetensors"\n[options.learned-code]\nmodel = "learned-code"\n'
                                '[defaults]\nlatency = { dist = "trace", path = "trace.txt" }\n')
    s = load_scenario(p)
    assert s.scheme_options("aicc")["model"] == str(tmp_path / "sub" / "m.safetensors")
    assert s.scheme_options("learned-code")["model"] == "learned-code"  # a shipped name stays a name
    assert s.images == "/abs/x.npz"
    assert s.behaviours()[0].delay(3, 0.0) == 0.005


def test_to_dict_is_plain(tmp_path):
    import json

    d = load_scenario(write(tmp_path, FULL)).to_dict()
    json.dumps(d)
    assert d["workers"][0]["failure"] == [{"kind": "crash_at", "at_s": 2.0}]


# field path expected in the message, and the 1-based line (None: no line expected)
BAD = [
    ("N = 0", "N", 1),
    ("N = 2.0", "N", 1),
    ("seed = 1", "N", None),  # no N and no workers
    ("N = 2\nrequests = 0", "requests", 2),
    ("N = 2\ntimeout_s = 0", "timeout_s", 2),
    ("N = 2\ntimeout_s = -1.5", "timeout_s", 2),
    ("N = 2\ngroups_per_request = 0", "groups_per_request", 2),
    ("N = 2\n[options.aicc]\nplacement = \"everywhere\"", "options.aicc.placement", 3),
    ("N = 2\nschemes = [\"uncoded\"]\n[options.uncoded]\nplacement = \"shared\"", "options.uncoded.placement", 4),
    ("N = 2\n[options.learned-code]\nmodel = \"learned-code\"", "options.learned-code", 2),
    ("N = 2\n[options.aicc]\nbyzantine = \"one\"", "options.aicc.byzantine", 3),
    ("N = 2\nplacement = \"shared\"", "placement", 2),
    ("N = 2\nK = 0", "K", 2),
    ("N = 2\nschemes = [\"aicc\", \"magic\"]", "schemes[1]", 2),
    ("N = 2\nschemes = []", "schemes", 2),
    ("N = 2\nschemes = [\"aicc\", \"aicc\"]", "schemes", 2),
    ("N = 2\nmodel = \"default\"", "model", 2),
    ("N = 2\n[options.aicc]\nmodel = \"weights.pt\"", "options.aicc.model", 3),
    ("N = 2\nimages = \"train\"", "images", 2),
    ("N = 2\nname = \"\"", "name", 2),
    ("N = 2\nseed = -3", "seed", 2),
    ("N = 2\nworkerz = 3", "workerz", 2),
    ("N = 2\n[arrival]\nprocess = \"batch\"", "arrival.process", 3),
    ("N = 2\n[arrival]\nprocess = \"poisson\"", "arrival.rate", 2),
    ("N = 2\n[arrival]\nconcurrency = 0", "arrival.concurrency", 3),
    ("N = 2\n[arrival]\nrate = -1.0", "arrival.rate", 3),
    ("N = 2\n[defaults]\nlatency = { dist = \"exponential\", mean = -1 }",
     "defaults.latency.mean", 3),
    ("N = 2\n[defaults]\nlatncy = 1", "defaults.latncy", 3),
    ("N = 3\n[[workers]]\n[[workers]]", "workers", 2),
    ("[[workers]]\n[[workers]]\n[[workers]]\n"
     "latency = { dist = \"exponential\", mean = 0 }", "workers[2].latency.mean", 4),
    ("[[workers]]\nslowdown = 1\n[[workers]]\nfailure = { kind = \"crash_at\" }",
     "workers[1].failure.at_s", 4),
    ("[[workers]]\n[[workers]]\nbandwidth_mbit = 10", "workers[1].bandwidth_mbit", 3),
    ("N = 2\n[defaults]\nlink = { burst = 5000 }", "defaults.link.rate_mbit", 3),
    ("N = 2\n[defaults]\nlink = { rate_mbit = 0 }", "defaults.link.rate_mbit", 3),
    ("N = 2\n[defaults]\nlink = { rate_mbit = 1, burst = 100 }", "defaults.link.burst", 3),
    ("N = 2\n[defaults]\nlink = { rate_mbit = 1, burst = 5e3 }", "defaults.link.burst", 3),
    ("N = 2\n[defaults]\nlink = { rate_mbit = 1, queue_ms = 0 }", "defaults.link.queue_ms", 3),
    ("N = 2\n[defaults]\nlink = { rate_mbit = 1, delay_ms = 5 }", "defaults.link.delay_ms", 3),
    ("N = 2\n[defaults]\nlink = 3", "defaults.link", 3),
    ("[[workers]]\nlink = { rate_mbit = 1, up_at_s = 4 }", "workers[0].link.up_at_s", 2),
    ("[[workers]]\nlink = { rate_mbit = 1, down_at_s = 4, up_at_s = 3 }", "workers[0].link.up_at_s", 2),
    ("[[workers]]\nlink = { rate_mbit = 1, down_at_s = [4, 2], up_at_s = [5] }", "workers[0].link.down_at_s", 2),
    ("[[workers]]\nlink = { rate_mbit = 1, down_at_s = -1 }", "workers[0].link.down_at_s", 2),
    ("[[workers]]\nlink = { rate_mbit = 1, down_at_s = [1, \"x\"] }", "workers[0].link.down_at_s[1]", 2),
    ("[[workers]]\n[workers.link]\nrate_mbit = 1\nrate_changes = [{ at_s = 1 }]",
     "workers[0].link.rate_changes[0].rate_mbit", 4),
    ("[[workers]]\nlink = { rate_mbit = 1, rate_changes = { at_s = 1 } }", "workers[0].link.rate_changes", 2),
    ("N = 2\nalso_all_fast = true", "also_all_fast", 2),
    ("N = 2\nalso_all_fast = 1\n[defaults]\nlink = { rate_mbit = 1 }", "also_all_fast", 2),
    ("[[workers]]\nlatency = { dist = \"pareto\", scale = 1, alpha = 2, beta = 3 }",
     "workers[0].latency.beta", 2),
    ("[[workers]]\nfailure = [{ kind = \"none\" },\n  { kind = \"flapping\", period_s = 1, "
     "down_s = 2 }]", "workers[0].failure[1].down_s", 3),
]


@pytest.mark.parametrize("text, field, line", BAD, ids=[b[1] for b in BAD])
def test_invalid_scenarios_name_file_field_and_line(tmp_path, text, field, line):
    p = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as e:
        load_scenario(p)
    msg = str(e.value)
    where = f"{p}:{line}: " if line else f"{p}: "
    assert msg.startswith(where + field + ": "), msg


def test_toml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "N = 2\nseed = = 3\n")
    with pytest.raises(ConfigError, match=r"s\.toml: invalid TOML: .*line 2"):
        load_scenario(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read scenario file"):
        load_scenario(tmp_path / "absent.toml")


def test_find_line_is_best_effort():
    text = FULL
    assert find_line(text, "workers[0].latency.mean") == 25
    assert find_line(text, "workers[2].link.burst") == 32
    assert find_line(text, "arrival.rate") == 18
    assert find_line(text, "options.aicc.placement") == 12
    assert find_line(text, "nowhere") is None


def test_every_shipped_scenario_loads():
    files = sorted(SCENARIOS.glob("*.toml"))
    names = {f.stem for f in files}
    assert {"one-straggler", "pareto-n10", "dead-worker", "placement-shared",
            "placement-encoded", "flaky-network"} <= names
    for f in files:
        s = load_scenario(f)
        assert s.name == f.stem
        behaviours = s.behaviours()
        assert len(behaviours) == s.N == len(s.workers)
        for b in behaviours:
            d = b.delay(0, 0.0)
            assert d is None or d >= 0


def test_shipped_scenarios_say_what_they_promise():
    one = load_scenario(SCENARIOS / "one-straggler.toml")
    assert one.N == 3 and one.requests == 150
    assert [w.latency for w in one.workers] == [Constant(0.1), ShiftedExponential(0.1, 0.5), Constant(0.1)]
    assert load_scenario(SCENARIOS / "pareto-n10.toml").N == 10
    dead = load_scenario(SCENARIOS / "dead-worker.toml")
    assert [w.failures for w in dead.workers].count((CrashAt(1.0),)) == 1
    shared = load_scenario(SCENARIOS / "placement-shared.toml")
    encoded = load_scenario(SCENARIOS / "placement-encoded.toml")
    assert (shared.scheme_options("aicc")["placement"], encoded.scheme_options("aicc")["placement"]) == ("shared", "encoded")
    assert shared.workers == encoded.workers and shared.seed == encoded.seed
    kinds = {f.kind for w in load_scenario(SCENARIOS / "flaky-network.toml").workers
             for f in w.failures}
    assert {"flapping", "crash_probability"} <= kinds


def test_bandwidth_mbit_is_refused_with_the_link_table_to_use(tmp_path):
    with pytest.raises(ConfigError, match=r"workers\[0\]\.bandwidth_mbit: is not enforced by anything; .*link = \{ rate_mbit = 10 \}"):
        load_scenario(write(tmp_path, "[[workers]]\nbandwidth_mbit = 10\n"))


def test_link_defaults_burst_and_all_fast_twin(tmp_path):
    s = load_scenario(write(tmp_path, "also_all_fast = true\n[[workers]]\n"
                                      "[[workers]]\nlink = { rate_mbit = 2, down_at_s = 1, up_at_s = 2 }\n"
                                      "[[workers]]\nlink = { rate_mbit = 50, queue_ms = 20 }\n"))
    w0, w1, w2 = s.workers
    assert w0.link is None and s.has_links and s.also_all_fast
    assert w1.link.burst_bytes == MIN_BURST  # 10 ms at 2 Mbit/s is 2500 bytes, below two frames
    assert w2.link.burst_bytes == 62500  # 10 ms at 50 Mbit/s
    fast = s.all_fast()
    assert [w.link.rate_mbit for w in fast.workers] == [50.0] * 3
    assert all(w.link.events() == [] and w.link.burst_bytes == 62500 for w in fast.workers)
    assert fast.workers[2].link.queue_ms == 20 and not fast.also_all_fast
    assert [w.latency for w in fast.workers] == [w.latency for w in s.workers]
    d = s.to_dict()
    assert d["workers"][0]["link"] is None
    assert d["workers"][1]["link"] == {"rate_mbit": 2.0, "burst": MIN_BURST, "queue_ms": 100.0,
                                       "events": [{"at_s": 1.0, "kind": "down"}, {"at_s": 2.0, "kind": "up"}]}
    assert not load_scenario(write(tmp_path, "N = 2\n", "plain.toml")).has_links


def test_shipped_link_scenarios():
    slow = load_scenario(SCENARIOS / "slow-link.toml")
    assert slow.N == 3 and slow.also_all_fast
    assert sorted(w.link.rate_mbit for w in slow.workers) == [2.0, 100.0, 100.0]
    cut = load_scenario(SCENARIOS / "link-cut.toml")
    outages = [w.link.outages for w in cut.workers]
    assert outages.count(((5.0, 11.0),)) == 1 and outages.count(()) == 2
    mix = load_scenario(SCENARIOS / "wifi-mix.toml")
    assert mix.N == 10 and len({w.link.rate_mbit for w in mix.workers}) >= 5
    assert all(w.latency == Pareto(0.005, 1.5) for w in mix.workers)
