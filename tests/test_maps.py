"""H_S with several maps per encoded input (Scheme.maps): the model, its workers' arrays and spec, its costs, and
starting it from a trained one-map model (nets/widen.py)."""

import numpy as np
import pytest
import torch

from edgecc.bench import costs
from edgecc.coding.schemes import Scheme
from edgecc.data import load_split
from edgecc.errors import ConfigError
from edgecc.evaluate import evaluate
from edgecc.export import worker_arrays
from edgecc.modelfile import load_model, save_model
from edgecc.nets import AICC
from edgecc.nets.blocks import variance_preserving_init
from edgecc.nets.widen import widen_into
from edgecc.protocol import compute_spec
from edgecc.protocol.compute_spec import ComputeSpec
from edgecc.protocol.frames import RemoteProtocolError
from edgecc.reproduce import TABLE3
from edgecc.train import _start_from
from edgecc.worker.compute import EncodedCompute

K4 = Scheme(K=4, G=1, P=4, computation="hs")  # the paper's best K=4 R=5 cell
K4M4 = Scheme(K=4, G=1, P=4, computation="hs", maps=4)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_maps_is_recorded_only_when_set_and_keeps_R():
    assert "maps" not in K4.to_dict() and K4.map_count == 1  # older files stay as they were
    assert Scheme.from_dict(K4M4.to_dict()) == K4M4 and K4M4.map_count == 4
    assert K4M4.R == K4.R == 5  # the maps' polynomials have the one-map degree
    assert "4 maps per encoded input (ours" in K4M4.label()
    for bad in (0, 65, 1.5, True):
        with pytest.raises(ConfigError, match="maps must be"):
            Scheme(K=4, P=4, computation="hs", maps=bad)
    with pytest.raises(ConfigError, match="H_B has no V_p"):
        Scheme(K=2, maps=2)


@pytest.mark.parametrize("scheme", [K4M4, Scheme(K=2, G=1, P=2, computation="hs", encoder="mlp", compute_arch="mlp", maps=3)])
def test_the_cost_model_counts_the_maps_as_the_built_model_has_them(scheme):
    assert n_params(AICC(scheme)) == costs.model_params(scheme)
    row = costs.cost_row(scheme, "encoded", scheme.R + 1)
    M, P = scheme.map_count, scheme.P
    assert row["flops"]["worker"] == 2 * M * 784 * 10 + 2 * P * M * 784  # the 10 × M·784 map after Horner on each map
    assert row["bytes"]["up_per_worker"] == 4 * 784 * (1 + (P + 1) * M)  # x̃_n, then V_p for every map
    if scheme == K4M4:  # the master's extra work is only Λ's heads: 80 → 4 channels instead of 80 → 1
        one = costs.cost_row(K4, "encoded", 6)["flops"]["master"]
        assert row["flops"]["master"] - one == 5 * 2 * 80 * 784 * 3


def test_workers_compute_every_map_from_the_same_encoded_input_and_decode_exactly():
    """The collapsed worker map on E(α_n) and V_p gives the model's own H, so any R of N decode to D(β_k)."""
    s = Scheme(K=2, G=1, P=2, computation="hs", maps=3)
    torch.manual_seed(0)
    model = AICC(s).eval()
    variance_preserving_init(model, 0)
    info = {"kind": "aicc", "scheme": s.to_dict()}
    x = torch.rand(6, 2, 28, 28)
    alphas = [0.2, 0.4, 0.6, 0.8]
    with torch.no_grad():
        xt, v = model.encode(x, alphas), model.lambdas(x)
        want = model.compute(xt, v).numpy()
    assert v.shape == (6, 3, 3, 28, 28)  # (B, P+1, maps, H, W)
    worker = EncodedCompute(s, worker_arrays(model, info, "encoded"))
    got = np.stack([worker(xt[:, n].numpy(), v.numpy()) for n in range(4)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    x_, y_ = load_split("test")
    r = evaluate(model, info, x_[:200], y_[:200], 4)
    assert r["accuracy_decoded_min"] == r["accuracy_direct"]


def test_the_spec_sends_maps_only_when_there_are_several_and_checks_v_against_them():
    one = compute_spec.affine((28, 28), 10, P=4)
    assert "maps" not in one.to_wire() and one["maps"] == 1  # what masters sent before the key existed
    assert one.describe_inputs() == "x (B, 28, 28) and v (B, 5, 28, 28)"
    four = compute_spec.affine((28, 28), 10, P=4, maps=4)
    assert ComputeSpec.from_wire(four.to_wire()) == four
    assert four.describe_inputs() == "x (B, 28, 28) and v (B, 5, 4, 28, 28)"
    with pytest.raises(RemoteProtocolError, match="maps"):
        ComputeSpec.from_wire({**four.to_wire(), "maps": 0})
    with pytest.raises(RemoteProtocolError, match="one map"):
        ComputeSpec.from_wire(compute_spec.aicc_shared({"K": 2, "G": 1, "P": 1, "computation": "hb", "encoder": "cl",
                                                        "compute_arch": "cl"}, 0.5).to_wire() | {"maps": 2})
    with pytest.raises(ConfigError, match="affine map has shapes"):  # one map's arrays under a four-map spec
        EncodedCompute(K4M4, worker_arrays(AICC(K4), {"kind": "aicc", "scheme": K4.to_dict()}, "encoded"))


def test_a_model_of_more_maps_starts_from_a_one_map_model_computing_what_it_did(tmp_path):
    torch.manual_seed(0)
    small = AICC(K4)
    variance_preserving_init(small, 0)
    big = AICC(K4M4)
    assert widen_into(small, big, seed=0) == K4.P + 1  # each Λ_p's head gains three maps
    x = torch.rand(3, 4, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)
    torch.nn.functional.cross_entropy(big(x).reshape(-1, 10), torch.randint(0, 10, (12,))).backward()
    assert big.omega.fc1.weight.grad[:, 784:].abs().sum() > 0  # Ω starts to read the new maps at once
    assert torch.count_nonzero(big.omega.fc1.weight[:, 784:]) == 0
    with pytest.raises(ValueError, match="only be widened"):  # never fewer maps
        widen_into(big, small, seed=0)
    # through a real file, as `train --init ONE_MAP --maps 4` starts
    save_model(tmp_path / "one.safetensors", small, {"kind": "aicc", "scheme": K4.to_dict(), "training": {"epochs": 20}})
    fresh, info = AICC(K4M4), {"kind": "aicc", "scheme": K4M4.to_dict()}
    assert _start_from(fresh, info, str(tmp_path / "one.safetensors")) == 20
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), small(x), rtol=0, atol=1e-5)
    save_model(tmp_path / "four.safetensors", fresh, info)
    with pytest.raises(ValueError, match="different model"):
        _start_from(AICC(K4), {"kind": "aicc", "scheme": K4.to_dict()}, str(tmp_path / "four.safetensors"))
    assert load_model(tmp_path / "four.safetensors")[1]["scheme"]["maps"] == 4
    mlp1 = Scheme(K=2, G=1, P=2, computation="hs", encoder="mlp", compute_arch="mlp")  # maps are added to CL heads only
    save_model(tmp_path / "mlp1.safetensors", AICC(mlp1), {"kind": "aicc", "scheme": mlp1.to_dict()})
    mlp3 = Scheme(**{**mlp1.to_dict(), "maps": 3})
    with pytest.raises(ValueError, match="different model"):
        _start_from(AICC(mlp3), {"kind": "aicc", "scheme": mlp3.to_dict()}, str(tmp_path / "mlp1.safetensors"))


def test_the_four_map_cell_starts_from_the_annealed_one_map_cell():
    cell = next(c for c in TABLE3 if c.scheme is not None and c.scheme.maps)
    src = next(c for c in TABLE3 if c.name == cell.widened_from)
    assert cell.scheme == Scheme(**{**src.scheme.to_dict(), "maps": 4})
    assert cell.weight_init == src.weight_init and cell.lr == 3e-4
