"""The scheme registry (edgecc.schemes.registry): names in a declared order, each scheme's own options
checked by one builder, the plans it returns checked against the Plan protocol, and no torch to read it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecc.errors import ConfigError
from edgecc.modelfile import load_model
from edgecc.schemes import Option, Plan, SchemeDef, registry
from edgecc.schemes.base import PLAN_MEMBERS
from edgecc.schemes.registry import DEFAULT_SCHEMES, build_plan, check_options, names, run_group_size
from edgecc.scenario import spec

PACKAGE = Path(__file__).resolve().parent.parent / "edgecc"
BUILTIN = ("aicc", "uncoded", "replication", "learned-code", "approxifer", "local", "light-master")


@pytest.fixture
def scratch_scheme():
    """Registers schemes for one test and forgets them afterwards."""
    added = []

    def add(scheme: SchemeDef, **kw):
        added.append(scheme.name)
        return registry.register(scheme, **kw)

    yield add
    for name in added:
        registry.unregister(name)


def test_the_schemes_come_in_their_declared_order_and_scenarios_accept_exactly_them():
    assert names()[: len(BUILTIN)] == BUILTIN
    assert DEFAULT_SCHEMES == ("aicc", "uncoded", "replication")
    assert spec.DEFAULT_SCHEMES == DEFAULT_SCHEMES
    assert spec.load_scenario  # the spec validates `schemes` against names() when a file is read


@pytest.mark.parametrize("name, N, plan_N, placement", [
    ("aicc", 3, 3, "encoded"), ("uncoded", 3, 2, "plain"), ("replication", 3, 3, "plain"),
    ("learned-code", 3, 3, "plain"), ("approxifer", 3, 3, "plain"), ("local", 3, 0, "master"),
    ("light-master", 3, 3, "plain"),
])
def test_every_scheme_builds_from_its_defaults_into_a_plan(name, N, plan_N, placement):
    plan = build_plan(name, N)
    assert isinstance(plan, Plan) and all(hasattr(plan, m) for m in PLAN_MEMBERS)
    assert (plan.name, plan.N, plan.K, plan.placement) == (name, plan_N, 2, placement)
    assert plan.digest and isinstance(plan.summary(), dict)


def test_the_local_plan_classifies_at_the_master_like_a_plain_worker():
    from edgecc.data import load_sample
    from edgecc.worker.compute import PlainCompute

    images, labels = load_sample()
    plan = build_plan("local", 0)
    logits = plan.at_master(images[:64].reshape(32, 2, 28, 28))
    worker = build_plan("uncoded", 2)  # the same centralized MLP, run as an uncoded worker runs it
    want = PlainCompute(worker.arrays)(images[:64].astype(np.float32) / 255.0).reshape(32, 2, 10)
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    assert plan.complete({}) and plan.reachable(set()) and plan.oracle({0: 1.0}) == 0.0


def test_K_comes_from_the_run_else_the_schemes_models_else_the_default():
    assert build_plan("approxifer", 5, 4).K == 4
    assert run_group_size({"aicc": {}, "uncoded": {}}) == 2  # the shipped AICC model's K
    assert run_group_size({"uncoded": {}}, 3) == 3 and run_group_size({"uncoded": {}}) == registry.DEFAULT_K
    with pytest.raises(ConfigError, match="the AICC model groups K=2 images; the run has K=4"):
        build_plan("aicc", 6, 4)
    with pytest.raises(ConfigError, match="learned-code model groups k=2"):
        build_plan("learned-code", 6, 3)
    net, info = load_model("default")
    info4 = {**info, "scheme": {**info["scheme"], "K": 4}}  # a header read without its weights is enough
    with pytest.raises(ConfigError, match="different numbers of images"):
        run_group_size({"aicc": {"model": (net, info4)}, "learned-code": {}})


def test_options_are_each_schemes_own_and_checked_before_anything_is_built():
    with pytest.raises(ConfigError, match="scheme 'uncoded' has no option placement; its options are model, wire_dtype"):
        build_plan("uncoded", 3, placement="shared")
    with pytest.raises(ConfigError, match="scheme 'local' has no option wire_dtype"):
        build_plan("local", 0, wire_dtype="f2")
    with pytest.raises(ConfigError, match="option placement must be one of encoded, shared; got 'everywhere'"):
        build_plan("aicc", 3, placement="everywhere")
    with pytest.raises(ConfigError, match="option byzantine must be an integer, got 'one'"):
        build_plan("aicc", 3, byzantine="one")
    with pytest.raises(ConfigError, match="option byzantine must be >= 0"):
        build_plan("approxifer", 3, byzantine=-1)
    with pytest.raises(ConfigError, match="runs models of kind aicc; 'default-mlp' is of kind 'centralized-mlp'"):
        build_plan("aicc", 3, model="default-mlp")
    with pytest.raises(ConfigError, match="runs models of kind centralized-mlp, centralized-cnn or centralized-resnet18; 'default' is"):
        build_plan("uncoded", 3, model="default")
    with pytest.raises(ConfigError, match=r"scheme 'aicc': correcting 1 liar\(s\) needs N >= R \+ 2E = 4"):
        build_plan("aicc", 3, byzantine=1)  # a plan's own check (a ValueError), named by scheme
    # strings from the command line are parsed to the declared types; defaults fill the rest
    opts = check_options("aicc", {"byzantine": "1", "tolerance": "0.05"})
    assert (opts["byzantine"], opts["tolerance"], opts["placement"]) == (1, 0.05, "encoded")


def test_an_unknown_scheme_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown scheme 'parm'; the schemes are aicc, uncoded, replication"):
        build_plan("parm", 3)


class _Echo(Plan):
    """A minimal plan for the registry's checks: every worker gets the image, any answer decodes."""

    placement, wire_dtype, digest, wire_arrays, need = "plain", "f4", "x", {}, "any one"

    def __init__(self, name: str, N: int, K: int):
        self.name, self.N, self.K = name, N, K

    def compute_spec(self, index):
        from edgecc.protocol import compute_spec

        return compute_spec.affine()

    def scheme_params(self, index):
        return {}

    def payloads(self, images):
        return [{}] * self.N

    def complete(self, answered):
        return bool(answered)

    def reachable(self, possible):
        return bool(possible)

    def decoded(self, results):
        return np.zeros((1, self.K, 10)), {"subset": list(results)}


def test_register_adds_a_scheme_with_its_options_and_checks_what_its_builder_returns(scratch_scheme):
    scratch_scheme(SchemeDef("echo", lambda N, K, *, copies: _Echo("echo", min(N, copies), K), "test",
                             options=(Option("copies", 1, "workers used", type=int, minimum=1),)))
    assert "echo" in names() and names()[-1] == "echo"
    assert build_plan("echo", 3, copies="2").N == 2
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(SchemeDef("echo", lambda N, K: None, "again"))
    with pytest.raises(ConfigError, match="is a built-in scheme"):
        registry.register(SchemeDef("aicc", lambda N, K: None, "shadow"))
    with pytest.raises(ConfigError, match="each once, a Python identifier"):
        registry.register(SchemeDef("bad", lambda N, K, **o: None, "x", options=(Option("wire-dtype", "f4", "x"),)))
    scratch_scheme(SchemeDef("liar", lambda N, K: _Echo("someone-else", N, K), "names itself wrongly"))
    with pytest.raises(ConfigError, match="scheme 'liar' built a plan named 'someone-else'"):
        build_plan("liar", 3)
    scratch_scheme(SchemeDef("big", lambda N, K: _Echo("big", N + 1, K), "wants more workers than the run has"))
    with pytest.raises(ConfigError, match="built a plan for 4 workers, the run has 3"):
        build_plan("big", 3)
    scratch_scheme(SchemeDef("bare", lambda N, K: object(), "returns no plan"))
    with pytest.raises(ConfigError, match="built a object without name, K, N"):
        build_plan("bare", 3)


def test_reading_the_registry_loads_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, edgecc.schemes.registry as r, edgecc.scenario.spec; "
                        "[r.check_options(n, {}) for n in r.names()]; r.run_group_size({'aicc': {}, 'learned-code': {}}); "
                        "assert 'torch' not in sys.modules"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _compares_to_a_scheme_name(tree: ast.AST) -> list[int]:
    """Lines comparing something other than a model file's kind with a built-in scheme's name."""
    def is_name(node) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in BUILTIN
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts)

    def is_kind(node) -> bool:  # info["kind"], x.kind, kind: a model file's kind, named like its scheme
        text = ast.unparse(node)
        return "kind" in text

    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_name(s) for s in sides) and not any(is_kind(s) for s in sides):
                hits.append(node.lineno)
    return hits


def test_no_module_outside_the_schemes_asks_which_scheme_it_runs():
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "schemes" in path.relative_to(PACKAGE).parts[:1]:
            continue
        lines = _compares_to_a_scheme_name(ast.parse(path.read_text(), str(path)))
        if lines:
            found[str(path.relative_to(PACKAGE))] = lines
    assert not found, f"comparisons with a scheme's name (use a plan's members or the registry): {found}"
