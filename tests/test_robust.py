import itertools

import numpy as np
import pytest

from edgecc.coding.robust import robust_decode
from edgecc.coding.schemes import default_alphas, default_betas
from edgecc.errors import DecodeError
from edgecc.worker.faults import LIES, lie


def poly_results(R, N, B=6, seed=0):
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(R, B, 10))
    f = lambda t: sum(c * t**i for i, c in enumerate(coef))  # noqa: E731
    return f, {i: f(a).astype(np.float32) for i, a in enumerate(default_alphas(N))}


@pytest.mark.parametrize("R,E,K", [(2, 1, 2), (2, 2, 2), (3, 1, 2), (5, 2, 4)])
@pytest.mark.parametrize("kind", LIES)
def test_liars_are_located_and_decoded_around(R, E, K, kind):
    N = R + 2 * E
    f, results = poly_results(R, N, seed=R * 10 + E)
    alphas, betas = default_alphas(N), default_betas(K)
    want = np.stack([f(b) for b in betas], axis=1)
    for liars in itertools.combinations(range(N), E):
        bad = dict(results)
        for w in liars:
            bad[w] = lie(kind, results[w], 7)
        res = robust_decode(alphas, betas, R, E, bad)
        np.testing.assert_allclose(res.logits, want, rtol=0, atol=1e-3 * np.abs(want).max())
        flagged = {res.workers[i] for i in range(N) if res.suspects[i].all()}
        assert flagged == set(liars)
        assert not res.suspects[[i for i in range(N) if res.workers[i] not in liars]].any()


def test_honest_results_raise_no_suspicion():
    _, results = poly_results(3, 7)
    res = robust_decode(default_alphas(7), default_betas(2), 3, 2, results)
    assert not res.suspects.any()


def test_a_liar_only_in_some_groups_is_caught_there():
    f, results = poly_results(2, 4)
    results[1] = results[1].copy()
    results[1][2] += 50.0
    res = robust_decode(default_alphas(4), default_betas(2), 2, 1, results)
    assert res.suspects[1].tolist() == [False, False, True, False, False, False]


def test_too_few_results_for_E_liars():
    _, results = poly_results(2, 3)
    with pytest.raises(DecodeError, match="R \\+ 2E = 4"):
        robust_decode(default_alphas(3), default_betas(2), 2, 1, results)


def test_nan_from_a_liar_is_survivable():
    f, results = poly_results(2, 4)
    results[0] = np.full_like(results[0], np.nan)
    res = robust_decode(default_alphas(4), default_betas(2), 2, 1, results)
    assert np.isfinite(res.logits).all() and res.suspects[0].all()
