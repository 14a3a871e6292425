"""The light-master design of benchmarks/light_master_poly.py: Lagrange-coded inputs to a degree-2 network
decode exactly from any R = 2(K-1) + 1 of N results (no training: a random quadratic network)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("light_master_poly", ROOT / "benchmarks" / "light_master_poly.py")
lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lm)


def test_the_benchmark_shares_the_schemes_math_and_network():
    from edgecc.coding import lagrange
    from edgecc.nets.poly_mlp import PolyMLP

    assert lm.chebyshev is lagrange.chebyshev and lm.lagrange_basis is lagrange.lagrange_basis
    assert isinstance(lm.build(16), PolyMLP) and lm.build(16).info()["kind"] == "poly-mlp"


def test_lagrange_basis_is_the_identity_on_its_nodes_and_reproduces_polynomials():
    nodes = lm.chebyshev(5)
    assert np.allclose(lm.lagrange_basis(nodes, nodes), np.eye(5))
    at = np.linspace(-1, 1, 7)
    p = lambda t: 3 * t**4 - t**2 + 0.5
    assert np.allclose(lm.lagrange_basis(nodes, at) @ p(nodes), p(at))


def test_coded_inference_of_a_quadratic_network_decodes_exactly_from_every_R_subset():
    torch.manual_seed(0)
    model = lm.build(32).double().eval()
    K = 3
    R = 2 * (K - 1) + 1
    N = R + 2
    alphas, betas = lm.chebyshev(N), lm.chebyshev(K, 0.9)
    x = torch.rand(K, 784, dtype=torch.float64)
    with torch.no_grad():
        direct = model(x).numpy()
        coded = torch.from_numpy(lm.lagrange_basis(betas, alphas)) @ x  # X̃_n = Σ_k ℓ_k(α_n) x_k
        results = model(coded).numpy()
    for used in itertools.combinations(range(N), R):
        decoded = lm.lagrange_basis(alphas[list(used)], betas) @ results[list(used)]
        np.testing.assert_allclose(decoded, direct, rtol=1e-7, atol=1e-7)
    # one result fewer than R is not enough: the degree-2(K-1) polynomial is not determined
    used = list(range(R - 1))
    wrong = lm.lagrange_basis(alphas[used], betas) @ results[used]
    assert np.abs(wrong - direct).max() > 1e-3
