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


def test_k8_cells_show_their_training_state_and_never_an_unmeasured_accuracy(tmp_path):
    """Table k8 in the schemes table: not trained; training (a real epoch, from its per-epoch checkpoint); that
    checkpoint evaluated only on request, labelled partial and cached per epoch; trained cells at N=9 and at
    N = R + S for ApproxIFER's S = 1-3."""
    from edgecc.reproduce import TABLE_K8, checkpoint_path, merge_row
    from edgecc.train import TrainConfig, train
    from .test_reproduce import write_idx_dir

    results, train_runs, cache = tmp_path / "results", tmp_path / "train-runs", tmp_path / "schemes"
    rows = st.run(cache, "sample", 16, only=("aicc-k8",), log=lambda m: None, cached_only=True, results_dir=results,
                  train_runs=train_runs)
    assert [(r["cell"], r["status"], r["S"], r["overall_worst"]) for r in rows] == [
        ("aicc-k8-r4-hb-g3p1", "not trained", 5, None), ("aicc-k8-r8-hb-g7p1", "not trained", 1, None),
        ("aicc-k8-r4-hb-g3p1-he", "not trained", 5, None), ("aicc-k8-r8-hb-g7p1-he", "not trained", 1, None),
        ("aicc-k8-r8-hb-g7p1-he-cheb", "not trained", 1, None)]
    md = st.markdown(st.assemble(rows, None, 16))
    assert "| aicc (not trained) | K=8 G=7 P=1 CNN+CNN H_B | 8 | 1 | 9 | — | — | — | — | — |" in md
    # the He-init cells are labelled as beyond the paper
    assert "| aicc (not trained) | K=8 G=7 P=1 CNN+CNN H_B, He init (ours, not the paper's) | 8 | 1 | 9 |" in md

    images, labels = load_sample()
    data = write_idx_dir(tmp_path / "data", images[:64], labels[:64], images[64:80], labels[64:80])
    low = TABLE_K8[0]
    train(low.kind, low.scheme, TrainConfig(epochs=1, threads=1, data_dir=str(data)), tmp_path / "p.safetensors",
          run_dir=train_runs / "table-k8" / low.name, resume=True)  # one of its 20 epochs so far
    (row, *_) = st.run(cache, "sample", 16, only=("aicc-k8",), log=lambda m: None, results_dir=results,
                       train_runs=train_runs)
    assert row["status"].startswith("training, epoch 1/20; direct accuracy then ") and row["overall_worst"] is None

    (row, *_) = st.run(cache, "sample", 16, only=("aicc-k8",), log=lambda m: None, results_dir=results,
                       train_runs=train_runs, partial=True)
    assert row["status"] == "partial (epoch 1 of 20; not the paper protocol's result)" and row["epoch"] == 1
    assert row["straggler_sets"] == math.comb(9, 4) and row["images"] == 16 and (row["K"], row["S"], row["N"]) == (8, 5, 9)
    assert 0 <= row["overall_worst"] <= row["overall_mean"] <= row["best_subset"] <= 1
    assert (cache / "aicc-k8-r4-hb-g3p1-partial-e1@sample-16.json").is_file()
    again, *_ = st.run(cache, "sample", 16, only=("aicc-k8",), log=lambda m: None, results_dir=results,
                      train_runs=train_runs, cached_only=True, partial=True)
    assert again == row  # read back, not recomputed
    assert "| aicc (partial (epoch 1 of 20; not the paper protocol's result)) |" in st.markdown(st.assemble([row], None, 16))

    # finished: a row whose model file is here is evaluated like every AICC cell, at N=9 and N=R+1..R+3
    path = checkpoint_path(results, "k8", "paper", low.name)
    path.parent.mkdir(parents=True)
    (train_runs / "table-k8" / low.name / "checkpoint.pt").rename(tmp_path / "checkpoint.pt")
    import torch

    from edgecc.modelfile import build_model, save_model

    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    model = build_model(ck["info"])
    model.load_state_dict(ck["model"])
    save_model(path, model, ck["info"])
    merge_row(results / "table-k8.json", "k8", "paper", {"cell": low.name, "kind": "aicc", "scheme": low.scheme.to_dict(),
                                                         "accuracy": 12.5, "delta": None, "N": 9, "R": 4, "epochs": 20,
                                                         "train_seconds": 1.0, "checkpoint": str(path)})
    assert [(c, n) for c, _, n, *_ in st.aicc_cells(results)] == [
        ("aicc-k8-r4-hb-g3p1-N5", 5), ("aicc-k8-r4-hb-g3p1-N6", 6), ("aicc-k8-r4-hb-g3p1-N7", 7), ("aicc-k8-r4-hb-g3p1", 9)]
    assert [p["cell"] for p in st.k8_progress(results, train_runs)] == [  # the trained one has rows
        "k8-r8-hb-g7p1", "k8-r4-hb-g3p1-he", "k8-r8-hb-g7p1-he", "k8-r8-hb-g7p1-he-cheb"]
    trained = st.aicc_cell(str(path), 5, images[:16], labels[:16].astype(np.int64))
    assert (trained["S"], trained["straggler_sets"]) == (1, 5) and "status" not in trained

    # `compare --cached-only` keeps the worker timings of the table it rewrites instead of measuring them again
    assert st.previous_worker_seconds(results) is None
    st.write(st.assemble([trained], {"aicc-affine": 2e-7}, 16), results)
    assert st.previous_worker_seconds(results) == {"aicc-affine": 2e-7}


def test_a_cached_row_counts_only_for_the_model_file_it_was_computed_from(tmp_path):
    """`edgecc compare` caches each cell's row; retraining a cell's model into the same path must not bring back
    the old model's row (it would be silently wrong): the cache is keyed by the file's content."""
    from edgecc.coding.schemes import Scheme
    from edgecc.reproduce import merge_row
    from edgecc.train import TrainConfig, train
    from .test_reproduce import write_idx_dir

    images, labels = load_sample()
    data = write_idx_dir(tmp_path / "data", images[:64], labels[:64], images[64:80], labels[64:80])
    results, cache = tmp_path / "results", tmp_path / "schemes"
    model = results / "checkpoints" / "table2" / "cnn+cnn-hb.safetensors"
    scheme = Scheme(K=2, G=1, computation="hb", encoder="cl", compute_arch="cl")
    train("aicc", scheme, TrainConfig(epochs=1, threads=1, data_dir=str(data)), model, run_dir=tmp_path / "a.run")
    merge_row(results / "table2.json", 2, "paper", {"cell": "cnn+cnn-hb", "kind": "aicc", "scheme": scheme.to_dict(), "accuracy": 10.0,
                                                   "N": 3, "R": 2, "checkpoint": str(model)})
    run = lambda cache=cache, limit=16, **kw: st.run(cache, "sample", limit, only=("aicc-t2-cnn+cnn-hb",), log=lambda m: None,
                                                     results_dir=results, **kw)
    (first,) = run()
    assert run(cached_only=True) == [first]  # read back
    # the table written from it serves as the cache of a machine that never computed it (a fresh clone) ...
    st.write(st.assemble([dict(first)], None, 16), results)
    assert run(tmp_path / "clone-cache", cached_only=True) == [first]
    assert run(tmp_path / "other-images", limit=8, cached_only=True) == []  # ... for the same images only
    train("aicc", scheme, TrainConfig(epochs=1, threads=1, data_dir=str(data), seed=1), model, run_dir=tmp_path / "b.run")
    assert run(cached_only=True) == []  # the retrained model's row is not in the cache: left out, not the old row
    assert run(tmp_path / "clone-cache-2", cached_only=True) == []  # nor taken from the table written before
    (second,) = run()
    assert second["checkpoint"] == first["checkpoint"] and len(list(cache.glob("aicc-t2-cnn+cnn-hb@*.json"))) == 2


def test_annealed_cells_are_rows_of_their_own_labelled_beyond_the_paper(tmp_path):
    """Tables 2-3 trained by the anneal recipe (results/table2-anneal.json) are compared beside the paper
    protocol's cells, under ids of their own and labelled as ours in both tables and on the map."""
    from edgecc.coding.schemes import Scheme
    from edgecc.reproduce import merge_row
    from edgecc.scheme_map import AICC_OURS, _base_text, _family

    results = tmp_path / "results"
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")  # aicc_cells lists cells whose model file is here; it reads no weights
    scheme = Scheme(K=2, G=1, computation="hb", encoder="cl", compute_arch="cl")
    row = {"cell": "cnn+cnn-hb", "kind": "aicc", "scheme": scheme.to_dict(), "accuracy": 90.0, "N": 3, "R": 2,
           "checkpoint": str(model)}
    merge_row(results / "table2.json", 2, "paper", row)
    merge_row(results / "table2-anneal.json", 2, "anneal", row)
    assert [c[0] for c in st.aicc_cells(results)] == ["aicc-t2-cnn+cnn-hb", "aicc-t2-cnn+cnn-hb-anneal"]

    paper, ours = st._aicc_costs(scheme, 3), st._aicc_costs(scheme, 3, "variance", "anneal")
    assert paper["base"] == "K=2 G=1 P=1 CNN+CNN H_B"
    assert ours["base"] == "K=2 G=1 P=1 CNN+CNN H_B, He init, anneal recipe (ours, not the paper's)"
    entry = lambda r: {**r, "scheme": "aicc"}
    assert _base_text(ours) == "CNN+CNN H_B G=1 P=1, He init, anneal recipe (ours, not the paper's)"
    assert (_family(entry(paper)), _family(entry(ours))) == ("aicc", AICC_OURS)
