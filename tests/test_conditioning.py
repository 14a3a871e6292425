"""The decoded-logit error bound piece by piece, weight choice, evaluation points, and the plan acting on them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgecc.coding.conditioning import choose, chosen_alphas, weights_many, worst_subset
from edgecc.coding.lagrange import decode_weights, max_amplification
from edgecc.coding.schemes import default_alphas, default_betas
from edgecc.errors import ConfigError, DecodeError
from edgecc.modelfile import load_model
from edgecc.schemes.aicc import CodedPlan

from .conftest import REPO

TABLE3 = REPO / "results" / "checkpoints" / "table3"


def test_weights_many_equals_lagrange_weights():
    a, b = np.array(chosen_alphas(10, 5, (0.25, 0.5, 0.75, 1.0))), np.array(default_betas(4))
    subs = np.array(list(itertools.combinations(range(10), 5))[:50])
    W = weights_many(a, b, subs)
    for s, w in zip(subs, W):
        np.testing.assert_allclose(w, decode_weights(a[s], b), rtol=1e-12)


def test_worst_subset_matches_the_lagrange_module():
    b = default_betas(4)
    amp, sub = worst_subset(default_alphas(10), b, 5)
    assert amp == pytest.approx(max_amplification(10, 5, b), rel=1e-9)
    assert amp == pytest.approx(np.abs(decode_weights([default_alphas(10)[i] for i in sub], b)).sum(1).max())


@pytest.mark.parametrize("n,R", [(7, 3), (9, 5)])
def test_choose_finds_the_best_subset_per_row_and_decodes_exactly(n, R):
    rng = np.random.default_rng(n)
    alphas = default_alphas(n)
    betas = default_betas(4)
    e = rng.uniform(1e-4, 1e-3, n)
    c = choose(alphas, betas, R, range(n), e)
    for k in range(4):  # no R-subset has a smaller Σ|w|e for this row; least squares may only beat it
        best = min((np.abs(decode_weights([alphas[i] for i in s], [betas[k]])[0]) * e[list(s)]).sum()
                   for s in itertools.combinations(range(n), R))
        assert c.bounds[k] <= best * (1 + 1e-9)
        assert c.bounds[k] == pytest.approx((np.abs(c.W[k]) * e).sum())
    coef = rng.normal(size=R)  # whatever weights were chosen, a degree R-1 polynomial decodes exactly
    y = np.polynomial.polynomial.polyval(np.array(alphas), coef)
    np.testing.assert_allclose(c.W @ y, np.polynomial.polynomial.polyval(np.array(betas), coef), atol=1e-8)


def test_swap_search_for_many_results_is_no_worse_than_spread_points():
    from edgecc.coding import conditioning as cond

    a, b = np.array(chosen_alphas(30, 5, (0.25, 0.5, 0.75, 1.0))), np.array(default_betas(4))
    e = np.full(30, 1e-4)
    W, cost = cond._best_rows_swap(a, b, e, 5)
    start = np.sort(np.argsort(a)[np.round(np.linspace(0, 29, 5)).astype(int)])
    spread = (np.abs(weights_many(a, b, start[None])[0]) * e[start]).sum(-1)
    assert np.all(cost <= spread * (1 + 1e-12)) and np.all((W != 0).sum(1) == 5)


def test_choose_refuses_too_few_and_bad_error_bounds():
    with pytest.raises(DecodeError, match="R=3"):
        choose(default_alphas(5), default_betas(2), 3, [0, 1], [1e-3, 1e-3])
    with pytest.raises(DecodeError, match="positive"):
        choose(default_alphas(5), default_betas(2), 3, [0, 1, 2], [1e-3, 0.0, 1e-3])


@pytest.mark.parametrize("K,R,N", [(4, 5, 10), (4, 5, 20), (4, 3, 20), (2, 3, 30)])
def test_chosen_points_are_positive_distinct_and_beat_uniform(K, R, N):
    b = tuple(default_betas(K))
    a = chosen_alphas(N, R, b)
    assert len(a) == N and min(a) > 0 and len(set(a)) == N and np.all(np.isfinite(a))
    assert a == chosen_alphas.__wrapped__(N, R, b)  # deterministic: master and evaluation agree
    assert worst_subset(a, b, R)[0] < worst_subset(default_alphas(N), b, R)[0] / 2


@pytest.fixture(scope="module")
def k4r5():
    path = TABLE3 / "k4-r5-hs-g1p4.safetensors"
    if not path.exists():
        pytest.skip(f"{path.name} is not in this checkout")
    return load_model(path)


def test_measured_result_errors_bound_the_decode_on_unseen_images(k4r5):
    """Results made exactly as the runtime makes them (f4 wire) for groups the calibration never saw: every
    decoded logit is within the reported bound of the exact value, for the worst subset and for every choice."""
    import torch

    from edgecc.data import load_sample
    from edgecc.worker.compute import EncodedCompute
    from edgecc.schemes.aicc import CALIBRATION_GROUPS

    model, info = k4r5
    plan = CodedPlan(model, info, 10, wire_dtype="f4", encode_precision="fp32")
    images, _ = load_sample()
    x = images[CALIBRATION_GROUPS * 4 : CALIBRATION_GROUPS * 4 + 160].reshape(-1, 4, 28, 28)
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    with torch.inference_mode():
        enc = model.encode(xt, plan.alphas, "fp32").numpy()
        v = model.lambdas(xt, "fp32").numpy()
        exact = model(xt).numpy().astype(np.float64)  # D(β_k), fp32 reference
    comp = EncodedCompute(plan.scheme, plan.arrays)
    results = {n: comp(enc[:, n], v).astype(np.float32) for n in range(10)}
    worst = worst_subset(plan.alphas, plan.decoder.betas, 5)[1]
    for subset in (worst, tuple(range(10)), (0, 2, 4, 6, 8, 9)):
        c = plan.choice(subset)
        got = np.einsum("kr,rbv->bkv", c.W, np.stack([results[w] for w in c.workers]).astype(np.float64))
        # the reference itself is fp32: allow its own rounding on top of the bound
        assert np.abs(got - exact).max() <= c.bound + 1e-4 * np.abs(exact).max()


def test_result_errors_measure_the_wire_rounding(k4r5):
    """f2 inputs and results cost orders of magnitude more than f4, and never less than rounding the result."""
    from edgecc.data import load_sample
    from edgecc.schemes.aicc import calibration_inputs, result_errors

    model, info = k4r5
    plan = CodedPlan(model, info, 6, wire_dtype="f4", encode_precision="fp32")
    images, _ = load_sample()
    cal = calibration_inputs(model, plan.scheme, images[:64].reshape(-1, 4, 28, 28))
    e4 = result_errors(model, plan.scheme, plan.arrays, plan.alphas, cal, "f4")
    e2 = result_errors(model, plan.scheme, plan.arrays, plan.alphas, cal, "f2")
    shared = result_errors(model, plan.scheme, plan.arrays, plan.alphas, cal, "f4", placement="shared")
    assert np.all(e4 > 0) and np.all(e2 > 100 * e4) and np.all(shared <= e4 * 1.0001)
    import torch
    with torch.inference_mode():
        x = torch.from_numpy(images[:64].reshape(-1, 4, 28, 28).astype(np.float32) / 255.0)
        y = np.abs(model(x, plan.alphas).numpy()).max(axis=(0, 2))  # largest |result| per worker
    assert np.all(e2 >= 2.0**-13 * y)  # some element sits at least a quarter ulp from float16


def test_plan_waits_reaches_and_fails_consistently(k4r5):
    model, info = k4r5
    plan = CodedPlan(model, info, 20, wire_dtype="f4", encode_precision="fp32")
    worst = worst_subset(plan.alphas, plan.decoder.betas, 5)[1]
    fake = {n: np.zeros((1, 10), np.float32) for n in range(20)}
    assert not plan.complete({n: fake[n] for n in worst})  # too ill-conditioned alone
    assert not plan.reachable(set(worst))  # and no more can come: fail at once
    assert plan.reachable(set(range(20))) and plan.complete(fake)
    rng = np.random.default_rng(0)
    for _ in range(4):  # any arrival order: complete exactly when the results in hand meet the tolerance
        order = np.r_[list(worst), rng.permutation([n for n in range(20) if n not in worst])]
        for i in range(5, 21):
            got = {int(n): fake[int(n)] for n in order[:i]}
            assert plan.complete(got) == (plan.choice(got).bound <= plan.tolerance or i == 20)
            assert plan.reachable(set(got)) == (plan.choice(got).bound <= plan.tolerance)
    plan.tolerance = plan.best_case.bound / 2  # no set of results can meet this: all twenty in hand must fail
    with pytest.raises(DecodeError, match="above the tolerance"):
        plan.decoded(fake)


def test_refusal_names_the_numbers_and_the_remedies(k4r5):
    model, info = k4r5
    with pytest.raises(ConfigError) as e:
        CodedPlan(model, info, 6, wire_dtype="f2", encode_precision="fp32")
    msg = str(e.value)
    assert "N=6 workers with f2 results" in msg and "tolerance 0.01" in msg and "--wire-dtype f4 (bound" in msg
    plan = CodedPlan(model, info, 6, wire_dtype="f2", encode_precision="fp32", policy="first-r")  # comparisons still run
    assert plan.complete({n: np.zeros((1, 10)) for n in range(5)})
