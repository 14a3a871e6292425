"""The scheme registry (edgecc.schemes.registry): one builder per name, used by scenarios, serve and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecc.errors import ConfigError
from edgecc.modelfile import load_model
from edgecc.schemes.registry import SCHEMES, PlanRequest, build_plan
from edgecc.scenario import spec


@pytest.fixture(scope="module")
def default_model():
    return load_model("default")


def test_scenarios_accept_exactly_the_registered_schemes():
    assert spec.SCHEMES == tuple(SCHEMES)
    assert set(spec.DEFAULT_SCHEMES) <= set(SCHEMES)


@pytest.mark.parametrize("name, N, K, plan_N", [
    ("aicc", 3, 2, 3), ("uncoded", 3, 2, 2), ("replication", 3, 2, 3), ("learned-code", 3, 2, 3), ("approxifer", 3, 2, 3),
])
def test_every_scheme_builds_from_the_default_model(default_model, name, N, K, plan_N):
    net, info = default_model
    plan = build_plan(name, PlanRequest(N, net, info))
    assert plan.N == plan_N and plan.K == K
    assert len(plan.alphas) == plan.N and plan.digest and plan.placement in ("encoded", "plain")


def test_schemes_that_need_only_K_take_it_without_a_model():
    plan = build_plan("approxifer", PlanRequest(5, K=4))
    assert (plan.N, plan.K) == (5, 4)
    with pytest.raises(ConfigError, match="needs K"):
        build_plan("uncoded", PlanRequest(3))
    with pytest.raises(ConfigError, match="needs an AICC model"):
        build_plan("aicc", PlanRequest(3, K=2))


def test_an_unknown_scheme_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown scheme 'parm'; the schemes are aicc, uncoded"):
        build_plan("parm", PlanRequest(3, K=2))


def test_reading_the_registry_loads_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, edgecc.schemes.registry, edgecc.scenario.spec; "
                        "assert 'torch' not in sys.modules"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
