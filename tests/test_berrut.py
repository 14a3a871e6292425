import itertools

import numpy as np
import pytest

from edgecc.coding.berrut import (BerrutCode, berrut_weights, needed_results, query_points, worker_points,
                                  workers_for)
from edgecc.errors import ConfigError, DecodeError
from edgecc.worker.faults import LIES, lie


def test_point_sets_are_the_published_ones():
    np.testing.assert_allclose(query_points(2), [np.cos(np.pi / 4), np.cos(3 * np.pi / 4)])
    np.testing.assert_allclose(worker_points(4, "n"), np.cos(np.arange(4) * np.pi / 4))
    np.testing.assert_allclose(worker_points(4, "n-1"), np.cos(np.arange(4) * np.pi / 3))
    assert workers_for(8, 1) == 9 and workers_for(2, 1, E=1) == 6 and needed_results(2, 1) == 5
    with pytest.raises(ConfigError, match="point set"):
        worker_points(4, "chebyshev")


def test_interpolation_is_exact_at_the_nodes_in_any_given_order():
    rng = np.random.default_rng(0)
    x = rng.permutation(worker_points(7))
    f = rng.normal(size=7)
    np.testing.assert_array_equal(berrut_weights(x, x), np.eye(7))
    between = np.linspace(-0.99, 0.99, 50)
    np.testing.assert_allclose(berrut_weights(x, between).sum(axis=1), 1.0)  # constants are reproduced
    # the sign pattern follows the sorted order: shuffling the nodes does not change the interpolant
    order = np.argsort(x)
    np.testing.assert_allclose(berrut_weights(x, between) @ f, berrut_weights(x[order], between) @ f[order])


@pytest.mark.parametrize("points", ["n", "n-1"])
def test_smooth_functions_converge_at_berruts_first_order_rate(points):
    f = lambda t: np.exp(t) * np.sin(2 * t)  # noqa: E731
    t = np.linspace(-1, 1, 201)
    errs = [np.abs(berrut_weights(worker_points(n, points), t) @ f(worker_points(n, points)) - f(t)).max() for n in (10, 20, 40)]
    assert errs[2] < 0.04 and 1.8 < errs[0] / errs[1] < 2.5 and 1.8 < errs[1] / errs[2] < 2.5  # error ~ 1/n


@pytest.mark.parametrize("K,S", [(2, 1), (4, 2), (8, 1), (3, 3)])
@pytest.mark.parametrize("points", ["n", "n-1"])
def test_decode_from_any_K_of_N_recovers_an_affine_model_exactly(K, S, points):
    """Berrut reproduces constants, so an affine f (weights summing to one on both sides) decodes exactly
    from every K-subset: the encoder/decoder are consistent whichever workers answer."""
    rng = np.random.default_rng(K * 10 + S)
    code = BerrutCode(K, K + S, points)
    X = rng.normal(size=(5, K, 6))
    A, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    worker_in = code.encode(X)  # (5, N, 6)
    assert worker_in.shape == (5, K + S, 6)
    out = {i: worker_in[:, i] @ A + b for i in range(code.N)}
    for subset in itertools.combinations(range(code.N), K):
        got = code.decode({i: out[i] for i in subset})
        if K == 1:
            continue
        # affine f commutes with the weights, so decoding = Berrut(decoder) ∘ Berrut(encoder) applied to X, then f
        M = code.decode_weights(subset) @ code.enc[list(subset)]
        np.testing.assert_allclose(got, np.einsum("kj,bjd->bkd", M, X) @ A + b, atol=1e-9)
    with pytest.raises(DecodeError, match="needs K"):
        code.decode({i: out[i] for i in range(K - 1)})


def test_a_query_on_a_worker_node_is_returned_exactly():
    code = BerrutCode(2, 4)  # cos(π/4) is both α_0 and z_1
    X = np.random.default_rng(1).normal(size=(3, 2, 5))
    np.testing.assert_allclose(code.encode(X)[:, 1], X[:, 0], atol=1e-15)


def mlp_outputs(code, groups=40):
    """Worker outputs of the shipped centralized MLP on Berrut-combined Fashion-MNIST images."""
    from edgecc.data import load_sample
    from edgecc.modelfile import load_model
    from edgecc.worker.compute import PlainCompute

    net, _ = load_model("default-mlp")
    f = PlainCompute({f"mlp.{k}": v.float().numpy() for k, v in net.state_dict().items()})
    images, labels = load_sample()
    x = images[: groups * code.K].reshape(groups, code.K, 28, 28).astype(np.float32) / 255
    wx = code.encode(x)
    return {i: f(wx[:, i]) for i in range(code.N)}, labels[: groups * code.K].reshape(groups, code.K)


@pytest.mark.parametrize("kind", LIES)
def test_one_liar_among_2K_plus_1_is_located_and_dropped(kind):
    """E=1, K=2: N = 2K + 2E − 1 = 5 results of the real MLP on real images; the liar at every position.

    Noise and class-flipping lies are far beyond Berrut's approximation error and are always found. The
    sign-flip lie (−2y) is small where the liar's own logits are small: it must be named in >= 70% of
    groups, and where it is missed it is within the approximation error, so predictions still match."""
    code = BerrutCode(2, 5)
    out, _ = mlp_outputs(code)
    found = []
    for liar in range(code.N):
        bad = dict(out)
        bad[liar] = lie(kind, out[liar], 7)
        res = code.robust_decode(1, bad)
        honest = code.decode({i: y for i, y in out.items() if i != liar})
        others = [i for i in range(code.N) if i != liar]
        assert res.suspects[others].mean() < 0.05
        if kind == "scale":
            assert res.suspects[liar].mean() >= 0.5, liar  # the end node z=1 is the hardest to predict
            found.append(res.suspects[liar].mean())
            assert (res.logits.argmax(-1) == honest.argmax(-1)).mean() >= 0.95
        else:
            assert res.suspects[liar].all(), liar
            np.testing.assert_allclose(res.logits, honest, atol=1e-9)
    assert kind != "scale" or np.mean(found) >= 0.7

def test_robust_decode_needs_2K_plus_2E_minus_1_results():
    code = BerrutCode(2, 6)
    out, _ = mlp_outputs(code, 4)
    with pytest.raises(DecodeError, match="2K \\+ 2E − 1 = 5"):
        code.robust_decode(1, {i: out[i] for i in range(4)})
