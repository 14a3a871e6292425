"""Wider coefficient networks (Scheme.coef_width) and starting them from a trained narrower model (nets/widen.py)."""

import pytest
import torch

from edgecc.bench import costs
from edgecc.coding.schemes import Scheme
from edgecc.errors import ConfigError
from edgecc.evaluate import evaluate
from edgecc.modelfile import load_model, save_model
from edgecc.nets import AICC
from edgecc.nets.blocks import variance_preserving_init
from edgecc.nets.widen import widen_into
from edgecc.reproduce import TABLE3, select, start_model
from edgecc.data import load_split
from edgecc.train import _start_from

K4 = Scheme(K=4, G=1, P=4, computation="hs")  # the paper's best K=4 R=5 cell


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_coef_width_is_recorded_only_when_set_and_sizes_the_master_networks():
    wide = Scheme(K=4, G=1, P=4, computation="hs", coef_width=160)
    assert "coef_width" not in K4.to_dict() and K4.width == 80  # older files stay as they were
    assert Scheme.from_dict(wide.to_dict()) == wide and wide.width == 160
    assert wide.R == K4.R == 5  # the workers' polynomial is the same
    assert n_params(AICC(wide)) == costs.model_params(wide) == 8_290_277
    assert n_params(AICC(K4)) == costs.model_params(K4) == 2_218_197
    assert costs.master_encode_flops(wide, 6) / costs.master_encode_flops(K4, 6) == pytest.approx(3.98, abs=0.01)
    assert "width 160 (ours" in wide.label()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="coef_width"):
            Scheme(K=4, coef_width=bad)
    with pytest.raises(ConfigError, match="has none"):  # MLP encoder and H_B: no CL coefficient network
        Scheme(K=2, encoder="mlp", compute_arch="cl", coef_width=60)


@pytest.mark.parametrize("narrow, wide", [
    (K4, Scheme(K=4, G=1, P=4, computation="hs", coef_width=160)),
    (Scheme(K=2, G=1), Scheme(K=2, G=1, coef_width=48)),  # CNN+CNN H_B: the worker's stack keeps its width
])
def test_a_widened_model_computes_what_the_narrow_one_did_and_then_learns_through_its_new_channels(narrow, wide):
    torch.manual_seed(0)
    small = AICC(narrow)
    variance_preserving_init(small, 0)
    big = AICC(wide)
    assert widen_into(small, big, seed=0) == (narrow.G + 1) + (narrow.P + 1 if narrow.computation == "hs" else 0)
    x = torch.rand(5, narrow.K, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-5)
    # the new channels' outgoing weights start at 0, and their gradient does not
    torch.nn.functional.cross_entropy(big(x).reshape(-1, 10), torch.randint(0, 10, (5 * narrow.K,))).backward()
    head = big.gamma.stacks[0].head
    assert head.weight.grad[:, narrow.width:].abs().sum() > 0
    assert torch.count_nonzero(head.weight[:, narrow.width:]) == 0


def test_widening_refuses_a_narrower_or_different_model():
    small, big = AICC(K4), AICC(Scheme(K=4, G=1, P=4, computation="hs", coef_width=160))
    with pytest.raises(ValueError, match="only be widened"):
        widen_into(big, small, seed=0)
    with pytest.raises(ValueError, match="structure"):
        widen_into(AICC(Scheme(K=4, G=2, P=2, computation="hs")), big, seed=0)


def test_a_run_starts_a_wider_model_from_a_narrow_model_file_and_it_decodes_as_exactly(tmp_path):
    """What `train --init NARROW` does to a wider scheme's fresh model (train._start_from), from a real file."""
    narrow, wide = Scheme(K=2, G=1), Scheme(K=2, G=1, coef_width=64)
    torch.manual_seed(0)
    small = AICC(narrow)
    variance_preserving_init(small, 0)
    save_model(tmp_path / "narrow.safetensors", small, {"kind": "aicc", "scheme": narrow.to_dict(),
                                                        "training": {"epochs": 20, "init_epochs": 10}})
    big, info = AICC(wide), {"kind": "aicc", "scheme": wide.to_dict()}
    assert _start_from(big, info, str(tmp_path / "narrow.safetensors"), seed=1) == 30  # the epochs it carries
    save_model(tmp_path / "wide.safetensors", big, info)
    (small, si), (big, bi) = load_model(tmp_path / "narrow.safetensors"), load_model(tmp_path / "wide.safetensors")
    x, y = load_split("test")
    a, b = evaluate(small, si, x[:400], y[:400], 3), evaluate(big, bi, x[:400], y[:400], 3)
    assert b["accuracy_direct"] == a["accuracy_direct"]
    assert b["accuracy_decoded_min"] == b["accuracy_direct"]  # decoding from any 2 of 3 is as exact as ever
    with pytest.raises(ValueError, match="different model"):  # widening is the one difference a start accepts
        _start_from(AICC(Scheme(K=2, G=2, coef_width=64)), {"kind": "aicc", "scheme": Scheme(K=2, G=2, coef_width=64).to_dict()},
                    str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ValueError, match="different model"):  # and never narrowing
        _start_from(AICC(Scheme(K=2, G=1, coef_width=20)), {"kind": "aicc", "scheme": Scheme(K=2, G=1, coef_width=20).to_dict()},
                    str(tmp_path / "wide.safetensors"))


def test_the_widened_cell_trains_by_the_anneal_recipe_from_its_source_cells_annealed_model(tmp_path):
    cell = next(c for c in TABLE3 if c.widened_from)
    assert cell.name not in {c.name for c in select(3, None, "paper")}
    assert cell.name in {c.name for c in select(3, None, "anneal")}
    with pytest.raises(ValueError, match="anneal recipe"):
        select(3, [cell.name], "paper")
    src = cell.widened_from
    assert start_model(tmp_path, 3, "anneal", cell.name) == tmp_path / "checkpoints" / "table3-anneal" / f"{src}.safetensors"
    seed2 = tmp_path / "seeds" / cell.name / "seed2"
    assert start_model(seed2, 3, "anneal", cell.name, 2) == (tmp_path / "seeds" / src / "seed2" / "checkpoints"
                                                             / "table3-anneal" / f"{src}.safetensors")
    assert start_model(tmp_path, 3, "anneal", src) == tmp_path / "checkpoints" / "table3" / f"{src}.safetensors"
    with pytest.raises(ValueError, match="not a seed folder"):
        start_model(tmp_path / "elsewhere", 3, "anneal", cell.name, 2)
