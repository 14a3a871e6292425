"""Cells that train and decode at their own points (Scheme.data_points / worker_points, beyond the paper): the
Chebyshev β's in [−1, 1] with the workers at cos(nπ/(N−1)), which the model file records and the master uses."""

import pytest
import torch

from edgecc.coding.schemes import systematic_betas, worker_point_rule
from edgecc.evaluate import evaluate
from edgecc.data import load_split
from edgecc.nets import AICC
from edgecc.nets.blocks import variance_preserving_init
from edgecc.reproduce import TABLES

CELLS = [(t, c) for t in (3, "k8") for c in TABLES[t] if c.scheme is not None and c.scheme.data_points is not None]


def test_each_table_with_a_one_straggler_k_above_2_has_a_chebyshev_cell():
    assert {c.name for _, c in CELLS} == {"k4-r5-hs-g1p4-he-cheb", "k8-r8-hb-g7p1-he-cheb"}


@pytest.mark.parametrize("table, cell", CELLS, ids=[c.name for _, c in CELLS])
def test_a_chebyshev_cell_is_its_paper_twin_at_other_points_and_decodes_exactly_from_its_worst_subsets(table, cell):
    twin = next(c for c in TABLES[table] if c.name == cell.name.removesuffix("-cheb"))
    s = cell.scheme
    assert s.to_dict() | {"data_points": None, "worker_points": None} == twin.scheme.to_dict() | {"data_points": None, "worker_points": None}
    assert (cell.lr, cell.weight_init) == (twin.lr, twin.weight_init)
    assert s.betas() == systematic_betas(s.K) and s.R == twin.scheme.R
    N = cell.N or s.R + 1
    assert s.alphas(N) == worker_point_rule("chebyshev-extreme", N) and min(s.alphas(N)) == -1.0
    torch.manual_seed(0)
    model = AICC(s).eval()
    variance_preserving_init(model, 0)
    x, y = load_split("test")
    r = evaluate(model, {"kind": "aicc", "scheme": s.to_dict()}, x[: 12 * s.K], y[: 12 * s.K], N, max_subsets=None)
    assert r["subsets_evaluated"] == N  # every R-subset of N = R + 1 workers
    assert r["accuracy_decoded_min"] == r["accuracy_direct"]
    assert r["max_abs_logit_error"] < 1e-3, r["max_abs_logit_error"]  # float32 workers, float64 decoding
