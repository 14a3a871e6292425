import itertools

import numpy as np
import pytest
import torch

from edgecc.coding.lagrange import Decoder
from edgecc.coding.schemes import Scheme, default_alphas
from edgecc.nets import AICC, CentralizedCNN, CentralizedMLP
from edgecc.nets.blocks import CoefNets


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("scheme,expected", [
    (Scheme(K=4, G=1, P=4, computation="hs"), 2_218_197),  # the paper's 100% of Table 3
    (Scheme(K=2, G=2, computation="hb"), 469_754),  # Table 3's 21%
    (Scheme(K=2, G=1, computation="hb"), 2 * 73_001 + 72_641 + 178_110),
    (Scheme(K=4, G=4, P=1, computation="hs"), 7 * 291_441 + 178_110),  # also 100%
    (Scheme(K=4, G=2, P=2, computation="hs"), 6 * 291_441 + 178_110),  # 86%
])
def test_parameter_counts_match_spec(scheme, expected):
    assert n_params(AICC(scheme)) == expected


def test_building_block_counts():
    assert n_params(CoefNets("cl", 2, 1)) == 73_001
    assert n_params(CoefNets("cl", 4, 1)) == 291_441
    assert n_params(CoefNets("mlp", 2, 1)) == (1568 * 1568 + 1568) + (1568 * 784 + 784)
    assert n_params(CentralizedMLP()) == 178_110
    assert n_params(CentralizedCNN()) == 72_641 + 178_110


def test_table3_percentages_that_the_paper_states_exactly():
    """21% and 100% are exact in SPEC §2; the paper's other percentages are rounded loosely (±2 points)."""
    full = 2_218_197
    assert round(100 * n_params(AICC(Scheme(K=2, G=2, computation="hb"))) / full) == 21
    assert n_params(AICC(Scheme(K=4, G=4, P=1, computation="hs"))) == full


CASES = [
    (Scheme(K=2, G=1, computation="hb"), 3),
    (Scheme(K=2, G=2, computation="hb", encoder="mlp", compute_arch="mlp"), 5),
    (Scheme(K=2, G=1, P=2, computation="hs"), 4),
    (Scheme(K=3, G=2, P=2, computation="hs", encoder="mlp", compute_arch="cl"), 6),
    (Scheme(K=4, G=1, P=4, computation="hs", encoder="cl", compute_arch="mlp"), 6),
    (Scheme(K=4, G=4, computation="hb"), 7),
]


@pytest.mark.parametrize("scheme,N", CASES, ids=lambda c: c.label() if isinstance(c, Scheme) else str(c))
def test_decoding_every_R_subset_equals_direct_evaluation(scheme, N):
    """The central invariant: H(E(α_n)) is a degree-(R-1) polynomial in α, so any R workers determine D(β_k)."""
    torch.manual_seed(0)
    model = AICC(scheme).double().eval()
    x = torch.rand(3, scheme.K, 28, 28, dtype=torch.float64)
    alphas = default_alphas(N)
    with torch.no_grad():
        direct = model(x).numpy()  # (3, K, 10)
        workers = model(x, alphas).numpy()  # (3, N, 10)
    dec = Decoder(alphas, scheme.betas(), scheme.R)
    scale = np.abs(direct).max() + 1e-12
    for subset in itertools.combinations(range(N), scheme.R):
        got = dec.decode({i: workers[:, i] for i in subset})
        amp = np.abs(dec.weights(subset)).sum(axis=1).max()
        assert np.abs(got - direct).max() <= 1e-9 * amp * scale, subset


def test_fewer_than_R_points_do_not_determine_D():
    """Sanity of the test above: with R-1 points the interpolation is wrong (D really has degree R-1)."""
    scheme = Scheme(K=2, G=2)
    torch.manual_seed(0)
    model = AICC(scheme).double().eval()
    x = torch.rand(2, 2, 28, 28, dtype=torch.float64)
    alphas = default_alphas(4)
    with torch.no_grad():
        direct, workers = model(x).numpy(), model(x, alphas).numpy()
    wrong = Decoder(alphas, scheme.betas(), scheme.R - 1).decode({0: workers[:, 0], 1: workers[:, 1]})
    assert np.abs(wrong - direct).max() > 1e-6


def test_float32_forward_matches_float64_within_amplified_error():
    scheme = Scheme(K=2, G=1)
    torch.manual_seed(0)
    m32 = AICC(scheme).eval()
    m64 = AICC(scheme).double().eval()
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    x = torch.rand(4, 2, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(m32(x).numpy(), m64(x.double()).numpy(), rtol=1e-4, atol=1e-5)


def test_hs_requires_v():
    m = AICC(Scheme(K=2, G=1, P=2, computation="hs"))
    with pytest.raises(ValueError, match="V_p"):
        m.compute(torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize("scheme,N", [CASES[0], CASES[2]], ids=lambda c: c.label() if isinstance(c, Scheme) else str(c))
def test_bf16_coefficients_still_decode_exactly(scheme, N):
    """bf16 rounds Γ's (and Λ's) outputs, but the α-polynomial is evaluated in float32 from them: every
    worker's input lies on one polynomial, so any R workers still give D(β_k) of those same coefficients."""
    torch.manual_seed(0)
    model = AICC(scheme).eval()
    x = torch.rand(3, scheme.K, 28, 28)
    alphas = default_alphas(N)
    with torch.inference_mode():
        c16 = model.coefficients(x, "bf16")
        assert c16.dtype == torch.float32
        assert 0 < (c16 - model.coefficients(x)).abs().max() < 0.05 * model.coefficients(x).abs().max()
        v = model.lambdas(x, "bf16").double() if scheme.computation == "hs" else None
        m64 = model.double()
        xt = lambda pts: m64.evaluate_encoder(c16.double(), pts)
        direct = m64.compute(xt(scheme.betas()), v).numpy()
        workers = m64.compute(xt(alphas), v).numpy()
    dec = Decoder(alphas, scheme.betas(), scheme.R)
    for subset in itertools.combinations(range(N), scheme.R):
        got = dec.decode({i: workers[:, i] for i in subset})
        assert np.abs(got - direct).max() <= 1e-9 * np.abs(direct).max()


def test_encode_precision_choice():
    from edgecc.nets import encode_precision

    assert encode_precision() in ("bf16", "fp32")  # bf16 where the CPU has native kernels
    assert encode_precision("bf16") == "bf16" and encode_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        encode_precision("fp16")
    with pytest.raises(ValueError, match="precision"):
        AICC(Scheme(K=2, G=1)).coefficients(torch.zeros(1, 2, 28, 28), "int8")


def test_mlp_bf16_inference_keeps_cast_weights_until_they_change():
    torch.manual_seed(0)
    nets = CoefNets("mlp", 2, 2).eval()
    x = torch.rand(3, 2, 28, 28)
    with torch.inference_mode():
        ref = nets(x)
        a = nets.forward_bf16(x)
        cached = nets._bf16[1]
        assert a.dtype == torch.float32 and (a - ref).abs().max() < 0.05 * ref.abs().max()
        assert nets.forward_bf16(x) is not None and nets._bf16[1] is cached  # cast once
    with torch.no_grad():
        nets.fc1.weight.mul_(2.0)  # as an optimizer step would
    with torch.inference_mode():
        b = nets.forward_bf16(x)
        assert nets._bf16[1] is not cached and not torch.equal(a, b)


@pytest.mark.parametrize("image", [(1, 28, 28), (3, 32, 32)])
def test_cl_bf16_inference_gives_autocasts_numbers_exactly(image):
    """forward_bf16's fused oneDNN path (nets/blocks.FusedConv) is a speed-up only: the coefficients, and so
    every encoded input and accuracy, are bf16 autocast's to the bit, at any batch, until the weights change."""
    from edgecc.nets.blocks import _HAS_FUSED_CONV

    torch.manual_seed(0)
    nets = CoefNets("cl", 2, 2, image).eval()
    for B in (1, 5):
        x = torch.rand(B, 2, *image[1:]) if image[0] == 1 else torch.rand(B, 2, *image)
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = nets(x).float()
            got = nets.forward_bf16(x)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.equal(got, ref)
    if not _HAS_FUSED_CONV:
        pytest.skip("this torch build has no oneDNN fused convolution: forward_bf16 is autocast itself")
    cached = nets._fused[1]
    with torch.no_grad():
        nets.stacks[0].convs[0].weight.mul_(2.0)  # as an optimizer step would
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = nets(x).float()
        assert torch.equal(nets.forward_bf16(x), ref) and nets._fused[1] is not cached


@pytest.mark.parametrize("computation,P", [("hb", 1), ("hs", 2)])
def test_at_points_from_computed_coefficients_is_forward_bit_for_bit(computation, P):
    """evaluate() reuses the encoder's coefficients for the direct logits and the workers' inputs: the same numbers
    as running forward, which computes them again."""
    torch.manual_seed(0)
    model = AICC(Scheme(K=2, G=1, P=P, computation=computation, encoder="cl", compute_arch="cl")).eval()
    x = torch.rand(5, 2, 28, 28)
    with torch.inference_mode():
        v = model.lambdas(x) if computation == "hs" else None
        coef = model.coefficients(x)
        assert torch.equal(model.at_points(coef, v), model(x))
        assert torch.equal(model.at_points(coef, v, [0.3, 0.7]), model(x, [0.3, 0.7]))
