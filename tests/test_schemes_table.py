import math

import numpy as np

from edgecc import schemes_table as st
from edgecc.data import load_sample


def test_replication_at_N_equals_K_plus_S_loses_a_slot_and_uncoded_loses_S():
    correct = np.ones(120, dtype=bool)
    rep = st.copies_cell("replication", "mlp", correct, K=2, S=1)  # workers 0, 2 on image 0; worker 1 alone on image 1
    assert not rep["tolerates"] and rep["worst_stragglers"] == [1] and rep["overall_worst"] == 0.5
    assert rep["degraded_worst"] == 0.0 and rep["straggler_sets"] == 3
    assert st.copies_cell("replication", "mlp", correct, K=1, S=2)["tolerates"]  # three copies of one image
    un = st.copies_cell("uncoded", "mlp", correct, K=8, S=1)
    assert un["images_per_round"] == 9 and math.isclose(un["overall_worst"], 8 / 9)


def test_approxifer_cell_is_the_worst_of_every_straggler_set():
    computes = st.base_computes()
    images, labels = load_sample()
    x = images[:96].astype(np.float32) / 255
    row = st.approxifer_cell(computes["mlp"], "mlp", 4, 2, "n", x, labels[:96].astype(np.int64))
    assert row["straggler_sets"] == math.comb(6, 2) and row["images"] == 96
    assert row["overall_worst"] <= row["overall_mean"] <= 1 and row["degraded_worst"] is not None
    assert row["up_bytes_per_image"] == 6 * 784 * 4 / 4
    table = st.assemble([row, {"scheme": "centralized", "base": "mlp", "K": 1, "S": 0, "N": 1, "no_straggler": 0.9,
                               "overall_worst": 0.9, "images": 96, "worker_flops": 1}], None, 96)
    assert math.isclose(row["relative_to_base"], row["overall_worst"] / 0.9)
    assert "| approxifer | mlp | 4 | 2 | 6 |" in st.markdown(table)
