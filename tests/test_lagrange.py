import itertools

import numpy as np
import pytest

from edgecc.coding.lagrange import Decoder, decode_weights, max_amplification
from edgecc.coding.schemes import Scheme, default_alphas, default_betas
from edgecc.errors import ConfigError, DecodeError


@pytest.mark.parametrize("K,R,N", [(2, 2, 3), (2, 3, 10), (4, 5, 10), (4, 3, 5), (3, 4, 7)])
def test_decode_is_exact_for_polynomials_of_degree_below_R(K, R, N):
    rng = np.random.default_rng(K * 100 + R)
    coef = rng.normal(size=(R, 6, 10))  # a degree R-1 polynomial with (6, 10) values
    poly = lambda t: sum(c * t**i for i, c in enumerate(coef))  # noqa: E731
    alphas, betas = default_alphas(N), default_betas(K)
    dec = Decoder(alphas, betas, R)
    want = np.stack([poly(b) for b in betas], axis=1)  # (6, K, 10)
    for subset in itertools.combinations(range(N), R):
        got = dec.decode({i: poly(alphas[i]) for i in subset})
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_fewer_than_R_results_are_refused():
    dec = Decoder(default_alphas(3), default_betas(2), 2)
    with pytest.raises(DecodeError, match="1 result.*R=2"):
        dec.decode({0: np.zeros((1, 10))})
    with pytest.raises(DecodeError, match="recovery threshold"):
        dec.weights([2])


def test_nan_results_are_refused():
    dec = Decoder(default_alphas(3), default_betas(2), 2)
    with pytest.raises(DecodeError, match="NaN"):
        dec.decode({0: np.full((1, 10), np.nan), 1: np.zeros((1, 10))})


def test_too_few_workers_for_threshold():
    with pytest.raises(DecodeError):
        Decoder(default_alphas(2), default_betas(2), 3)
    with pytest.raises(ConfigError, match="R=3"):
        from edgecc.coding.schemes import check_workers
        check_workers(Scheme(K=2, G=2), 2)


def test_weights_are_cached_and_read_only():
    dec = Decoder(default_alphas(5), default_betas(4), 3)
    a, b = dec.weights([0, 2, 4]), dec.weights([0, 2, 4])
    assert a is b
    assert not a.flags.writeable


def test_duplicate_points_refused():
    with pytest.raises(DecodeError, match="distinct"):
        decode_weights([0.5, 0.5], [1.0])


@pytest.mark.parametrize("K,R,N,expected", [(2, 2, 3, 5), (2, 3, 10, 161), (4, 5, 10, 2561), (4, 5, 20, 69121)])
def test_worst_subset_amplification_matches_spec(K, R, N, expected):
    assert max_amplification(N, R, default_betas(K)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scheme,R", [
    (Scheme(K=2, G=1), 2), (Scheme(K=2, G=2), 3), (Scheme(K=4, G=4), 5),
    (Scheme(K=4, G=2, P=2, computation="hs"), 5), (Scheme(K=4, G=1, P=4, computation="hs"), 5),
    (Scheme(K=2, G=1, P=2, computation="hs"), 3),
])
def test_recovery_threshold(scheme, R):
    assert scheme.R == R


@pytest.mark.parametrize("kwargs,match", [
    ({"K": 0}, "K must be"), ({"G": 1.5}, "G must be"), ({"computation": "hx"}, "computation"),
    ({"encoder": "rnn"}, "encoder"), ({"computation": "hb", "P": 2}, "P must be 1"),
])
def test_invalid_scheme(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Scheme(**kwargs)


def test_scheme_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="unknown scheme fields"):
        Scheme.from_dict({"K": 2, "Q": 1})
    assert Scheme.from_dict(Scheme(K=4, G=2).to_dict()) == Scheme(K=4, G=2)


@pytest.mark.parametrize("K,R,N", [(2, 2, 3), (4, 5, 20), (2, 3, 30)])
def test_decode_is_exact_at_the_points_chosen_for_N(K, R, N):
    from edgecc.coding.conditioning import chosen_alphas

    rng = np.random.default_rng(N)
    coef = rng.normal(size=(R, 3, 10))
    poly = lambda t: sum(c * t**i for i, c in enumerate(coef))  # noqa: E731
    betas = default_betas(K)
    alphas = chosen_alphas(N, R, tuple(betas))
    dec = Decoder(alphas, betas, R)
    want = np.stack([poly(b) for b in betas], axis=1)
    for subset in itertools.islice(itertools.combinations(range(N), R), 0, None, max(1, N // 3)):
        got = dec.decode({i: poly(alphas[i]) for i in subset})
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
