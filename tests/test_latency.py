"""Worker behaviour models: determinism, distribution sanity, failure models, validation."""

import math

import numpy as np
import pytest

from edgecc.errors import ConfigError
from edgecc.scenario.latency import (
    Constant, CrashAt, Exponential, FieldError, Flapping, Pareto, Trace, WorkerBehaviour,
    no_behaviour,
)


def behaviour(latency, failure=None, seed=1, worker=0, **extra):
    d = {"latency": latency, **extra}
    if failure is not None:
        d["failure"] = failure
    return WorkerBehaviour.from_dict(d, seed=seed, worker_index=worker)


def delays(b, n, elapsed_s=0.0):
    return np.array([b.delay(r, elapsed_s) for r in range(n)], dtype=float)


EXP = {"dist": "exponential", "mean": 0.05}


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_delays_across_instances():
    a, b = behaviour(EXP, seed=7, worker=2), behaviour(EXP, seed=7, worker=2)
    assert [a.delay(r, 0.0) for r in range(100)] == [b.delay(r, 0.0) for r in range(100)]


def test_delay_does_not_depend_on_call_order():
    b = behaviour(EXP, seed=7)
    forward = [b.delay(r, 0.0) for r in range(50)]
    backward = [b.delay(r, 0.0) for r in reversed(range(50))][::-1]
    assert forward == backward


@pytest.mark.parametrize("other", [dict(seed=8, worker=0), dict(seed=7, worker=1)])
def test_different_seed_or_worker_gives_different_delays(other):
    a = delays(behaviour(EXP, seed=7, worker=0), 50)
    b = delays(behaviour(EXP, **other), 50)
    assert not np.array_equal(a, b)


def test_adding_a_failure_model_keeps_surviving_delays():
    plain = behaviour(EXP, seed=3)
    lossy = behaviour(EXP, {"kind": "crash_probability", "p": 0.5}, seed=3)
    pairs = [(plain.delay(r, 0.0), lossy.delay(r, 0.0)) for r in range(200)]
    survived = [(p, q) for p, q in pairs if q is not None]
    assert 50 < len(survived) < 150
    assert all(p == q for p, q in survived)


def test_no_behaviour_always_answers_at_once():
    b = no_behaviour()
    assert all(b.delay(r, t) == 0.0 for r in range(20) for t in (0.0, 1e6))


def test_round_trip_through_dict():
    b = behaviour({"dist": "lognormal", "median": 0.01, "sigma": 0.3},
                  [{"kind": "flapping", "period_s": 2, "down_s": 0.5},
                   {"kind": "crash_probability", "p": 0.1}], seed=4, worker=3, slowdown=2.0)
    again = WorkerBehaviour.from_dict(b.to_dict(), seed=4, worker_index=3)
    assert again == b
    assert [again.delay(r, 0.1) for r in range(30)] == [b.delay(r, 0.1) for r in range(30)]


# --- distributions -----------------------------------------------------------------------------

N_DRAWS = 20_000


def test_constant():
    assert set(delays(behaviour({"dist": "constant", "value": 0.005}), 100)) == {0.005}


def test_exponential_mean():
    assert delays(behaviour(EXP), N_DRAWS).mean() == pytest.approx(0.05, rel=0.10)


def test_shifted_exponential_mean_and_minimum():
    d = delays(behaviour({"dist": "shifted_exponential", "shift": 0.01, "mean": 0.02}), N_DRAWS)
    assert d.min() >= 0.01
    assert d.mean() == pytest.approx(0.03, rel=0.10)


def test_lognormal_median():
    d = delays(behaviour({"dist": "lognormal", "median": 0.02, "sigma": 0.8}), N_DRAWS)
    assert np.median(d) == pytest.approx(0.02, rel=0.10)


def test_pareto_minimum_and_mean():
    d = delays(behaviour({"dist": "pareto", "scale": 0.005, "alpha": 3.0}), N_DRAWS)
    assert d.min() >= 0.005
    assert d.mean() == pytest.approx(0.005 * 3 / 2, rel=0.10)  # scale·α/(α−1)


def test_slowdown_multiplies():
    fast = delays(behaviour(EXP, seed=9), 100)
    slow = delays(behaviour(EXP, seed=9, slowdown=3.0), 100)
    np.testing.assert_allclose(slow, 3.0 * fast)


def test_trace_replays_cyclically_from_file(tmp_path):
    (tmp_path / "t.txt").write_text("# recorded delays, ms\n10\n20.5\n\n30  # slow one\n")
    b = WorkerBehaviour.from_dict({"latency": {"dist": "trace", "path": "t.txt"}},
                                  seed=0, worker_index=0, base_dir=tmp_path)
    assert [b.delay(r, 0.0) for r in range(7)] == pytest.approx(
        [0.010, 0.0205, 0.030, 0.010, 0.0205, 0.030, 0.010])
    # to_dict inlines the values so a remote worker needs no file
    assert b.to_dict()["latency"] == {"dist": "trace", "values_ms": [10.0, 20.5, 30.0]}


@pytest.mark.parametrize("content, fragment", [
    ("10\nabc\n", "t.txt:2: not a number"),
    ("10\n-1\n", "t.txt:2: delay must be finite"),
    ("# only a comment\n", "holds no delays"),
])
def test_bad_trace_file(tmp_path, content, fragment):
    (tmp_path / "t.txt").write_text(content)
    with pytest.raises(ConfigError, match="latency.path") as e:
        WorkerBehaviour.from_dict({"latency": {"dist": "trace", "path": str(tmp_path / "t.txt")}},
                                  seed=0, worker_index=0)
    assert fragment in str(e.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read trace file"):
        behaviour({"dist": "trace", "path": str(tmp_path / "nope.txt")})


# --- failure models ------------------------------------------------------------------------------


def test_crash_at():
    b = behaviour({"dist": "constant", "value": 0.001}, {"kind": "crash_at", "at_s": 2.0})
    assert b.delay(0, 1.999) == 0.001
    assert b.delay(1, 2.0) is None
    assert b.delay(2, 100.0) is None


def test_crash_probability_rate():
    b = behaviour(EXP, {"kind": "crash_probability", "p": 0.2})
    failed = sum(b.delay(r, 0.0) is None for r in range(5000))
    assert failed / 5000 == pytest.approx(0.2, abs=0.02)


@pytest.mark.parametrize("p, expect_failed", [(0.0, 0), (1.0, 100)])
def test_crash_probability_extremes(p, expect_failed):
    b = behaviour(EXP, {"kind": "crash_probability", "p": p})
    assert sum(b.delay(r, 0.0) is None for r in range(100)) == expect_failed


@pytest.mark.parametrize("t, up", [(0.0, True), (1.49, True), (1.5, False), (1.99, False),
                                   (2.0, True), (3.6, False), (10.2, True)])
def test_flapping(t, up):
    b = behaviour({"dist": "constant", "value": 0.0},
                  {"kind": "flapping", "period_s": 2.0, "down_s": 0.5})
    assert (b.delay(0, t) is not None) == up


def test_flapping_offset_shifts_the_cycle():
    f = Flapping(period_s=2.0, down_s=0.5, offset_s=1.0)
    assert f.fails(None, 0.5) and not f.fails(None, 1.5)


def test_failure_none_and_list():
    assert behaviour(EXP, {"kind": "none"}).failures == ()
    b = behaviour(EXP, [{"kind": "crash_at", "at_s": 5}, {"kind": "none"}])
    assert b.failures == (CrashAt(5),)


def test_request_id_must_be_non_negative():
    with pytest.raises(ValueError):
        no_behaviour().delay(-1, 0.0)


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("d, field", [
    ({"latency": {"dist": "exponential", "mean": -1}}, "latency.mean"),
    ({"latency": {"dist": "exponential", "mean": 0}}, "latency.mean"),
    ({"latency": {"dist": "exponential"}}, "latency.mean"),
    ({"latency": {"dist": "exponential", "mean": "fast"}}, "latency.mean"),
    ({"latency": {"dist": "exponential", "mean": True}}, "latency.mean"),
    ({"latency": {"dist": "exponential", "mean": math.nan}}, "latency.mean"),
    ({"latency": {"dist": "exponential", "mean": 1, "shape": 2}}, "latency.shape"),
    ({"latency": {"dist": "gamma", "mean": 1}}, "latency.dist"),
    ({"latency": {"mean": 1}}, "latency.dist"),
    ({"latency": 0.005}, "latency"),
    ({"latency": {"dist": "constant", "value": -0.1}}, "latency.value"),
    ({"latency": {"dist": "shifted_exponential", "shift": -1, "mean": 1}}, "latency.shift"),
    ({"latency": {"dist": "lognormal", "median": 0, "sigma": 1}}, "latency.median"),
    ({"latency": {"dist": "lognormal", "median": 1, "sigma": -1}}, "latency.sigma"),
    ({"latency": {"dist": "pareto", "scale": 0, "alpha": 1}}, "latency.scale"),
    ({"latency": {"dist": "pareto", "scale": 1, "alpha": 0}}, "latency.alpha"),
    ({"latency": {"dist": "trace"}}, "latency.path"),
    ({"latency": {"dist": "trace", "values_ms": []}}, "latency.values_ms"),
    ({"latency": {"dist": "trace", "values_ms": [1, -2]}}, "latency.values_ms[1]"),
    ({"failure": {"kind": "crash_at"}}, "failure.at_s"),
    ({"failure": {"kind": "crash_at", "at_s": -1}}, "failure.at_s"),
    ({"failure": {"kind": "explode"}}, "failure.kind"),
    ({"failure": {"kind": "crash_probability", "p": 1.5}}, "failure.p"),
    ({"failure": {"kind": "flapping", "period_s": 1, "down_s": 1}}, "failure.down_s"),
    ({"failure": {"kind": "flapping", "period_s": 0, "down_s": 1}}, "failure.period_s"),
    ({"failure": [{"kind": "none"}, {"kind": "crash_at", "at_s": "x"}]}, "failure[1].at_s"),
    ({"failure": "crash"}, "failure"),
    ({"slowdown": 0}, "slowdown"),
    ({"speed": 2}, "speed"),
])
def test_invalid_behaviour_names_the_field(d, field):
    with pytest.raises(ConfigError) as e:
        WorkerBehaviour.from_dict(d, seed=0, worker_index=0)
    assert isinstance(e.value, FieldError)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")


@pytest.mark.parametrize("seed, worker", [(-1, 0), (0, -1), (1.5, 0)])
def test_invalid_seed_or_index(seed, worker):
    with pytest.raises(ConfigError):
        WorkerBehaviour.from_dict({}, seed=seed, worker_index=worker)


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match="mean"):
        Exponential(-1.0)
    with pytest.raises(ConfigError, match="values_ms"):
        Trace(())
    assert Pareto(1.0, 2.0).scale == 1.0 and Constant(0).value == 0
