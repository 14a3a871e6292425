"""`edgecc reproduce`: rows merge across runs, recipes get their own column, committed checkpoints re-evaluate."""

import json
import re
import subprocess
import sys

import pytest
import torch

from edgecc import cli, reproduce as reproduce_module
from edgecc.cli import options as cli_options
from edgecc.coding.schemes import Scheme
from edgecc.modelfile import load_model, read_header, save_model
from edgecc.nets import AICC
from edgecc.reproduce import RESULTS_DOC, _compact, marker, render_into, render_markdown, reproduce
from edgecc.train import RECIPES, TrainConfig, train


def test_cells_merge_into_one_table_and_the_best_recipe_is_its_own_column(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    cfg = TrainConfig(epochs=1, limit=2000, threads=1)
    reproduce(2, ["baseline-mlp"], cfg, results, runs)
    # a second run (the learned code, on the baseline just trained) must keep the first run's row
    reproduce(2, ["learned-code-mlp"], cfg, results, runs)
    doc = json.loads((results / "table2.json").read_text())
    assert [r["cell"] for r in doc["rows"]] == ["baseline-mlp", "learned-code-mlp"]  # the paper's order
    for r in doc["rows"]:
        assert r["epochs"] == 1 and r["recipe"] == "paper" and r["storage"] in ("f32", "f16")
        assert (results / "checkpoints" / "table2" / f"{r['cell']}.safetensors").is_file()
    assert doc["rows"][0]["accuracy"] > 60.0 and doc["rows"][0]["paper"] == 89.12

    reproduce(2, ["baseline-mlp"], TrainConfig.for_recipe("best", epochs=1, limit=2000, threads=1), results, runs)
    best = json.loads((results / "table2-best.json").read_text())
    assert best["recipe"] == "best" and [r["cell"] for r in best["rows"]] == ["baseline-mlp"]
    assert (results / "checkpoints" / "table2-best" / "baseline-mlp.safetensors").is_file()
    md = render_markdown(2, results).splitlines()
    assert "best recipe" in md[0] and len(md) == 4
    assert md[2].startswith("| baseline-mlp | 89.12 |") and md[2].count("–") == 0  # both columns filled
    assert md[3].startswith("| learned-code-mlp |") and "| – |" in md[3]  # no best-recipe run for it

    # anneal: continues the committed paper-protocol model; its row counts both runs' epochs
    with pytest.raises(ValueError, match="train the paper-protocol cell first"):
        reproduce(2, ["mlp+mlp-hb"], TrainConfig.for_recipe("anneal", epochs=1, limit=2000, threads=1), results, runs)
    reproduce(2, ["baseline-mlp"], TrainConfig.for_recipe("anneal", epochs=1, limit=2000, threads=1), results, runs)
    row = json.loads((results / "table2-anneal.json").read_text())["rows"][0]
    assert row["recipe"] == "anneal" and row["epochs"] == 2
    annealed = read_header(results / "checkpoints" / "table2-anneal" / "baseline-mlp.safetensors")["training"]
    assert annealed["init"].endswith("table2/baseline-mlp.safetensors") and annealed["init_epochs"] == 1
    assert annealed["init_id"].startswith("sha256:")  # the starting model by its content (what a resume compares)
    assert "anneal recipe" in render_markdown(2, results).splitlines()[0]


def test_table3_renders_each_cells_size_beside_the_papers_share(tmp_path):
    cell = reproduce_module.TABLE3[0]
    params = sum(p.numel() for p in AICC(cell.scheme).parameters())
    row = {"cell": cell.name, "accuracy": 88.0, "delta": 0.7, "params": params, "epochs": 20}
    reproduce_module.merge_row(tmp_path / "table3.json", 3, "paper", row)
    head, _, line = render_markdown(3, tmp_path).splitlines()
    assert "% of 2,218,197 | paper % |" in head
    assert line == "| k2-r3-hb-g2p1 | 87.3 | 88.00 | +0.70 | 469,754 | 21.2 | 21 | 20 |"  # SPEC §2: the paper's 21%
    assert "paper %" not in render_markdown(2, "results").splitlines()[0]


def test_status_tells_done_partial_and_unstarted_cells_apart(tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    reproduce_module.merge_row(results / "table2.json", 2, "paper", {"cell": "mlp+mlp-hb", "accuracy": 85.0, "delta": 1.07,
                                                                     "epochs": 20, "train_seconds": 600.0})
    cell = next(c for c in reproduce_module.TABLE2 if c.name == "baseline-mlp")
    train(cell.kind, cell.scheme, TrainConfig(epochs=1, limit=1000, threads=1), tmp_path / "partial.safetensors",
          run_dir=runs / "table2" / "baseline-mlp", resume=True)  # one of the protocol's 20 epochs, then "killed"
    by_cell = {r["cell"]: r for r in reproduce_module.status(2, "paper", results, runs)}
    assert list(by_cell) == [c.name for c in reproduce_module.TABLE2]
    assert by_cell["mlp+mlp-hb"] == {"cell": "mlp+mlp-hb", "paper": 83.93, "state": "done", "accuracy": 85.0, "delta": 1.07,
                                     "epochs": 20, "minutes": 10.0}
    part = by_cell["baseline-mlp"]
    assert part["state"] == "partial" and (part["epochs"], part["of"]) == (1, 20) and 0 < part["last_accuracy"] <= 100
    assert part["minutes_left"] == pytest.approx(19 * part["minutes"])
    assert by_cell["baseline-cnn"]["state"] == "not started"
    assert all(r["state"] == "not started" for r in reproduce_module.status(2, "anneal", results, runs))  # its own run dirs


def test_the_tables_in_docs_results_are_what_the_committed_results_render():
    text = open(RESULTS_DOC).read()
    for table in [*reproduce_module.TABLES, reproduce_module.SEEDS]:
        assert f"{marker(table)}\n{reproduce_module.render_block(table)}\n\n" in text, \
            f"{RESULTS_DOC}'s Table {table} is stale: run `edgecc reproduce render {RESULTS_DOC}`"


def test_seed_table_takes_seed_0_from_its_table_and_the_others_from_their_folders(tmp_path):
    """benchmarks/seeds.py's layout: seed 0 is the table's own row, seed N the row in results/seeds/CELL/seedN/;
    a cell counts once two seeds have rows, each recipe on its own line, in the tables' cell order."""
    row = lambda cell, acc, seed: {"cell": cell, "accuracy": acc, "delta": None, "params": 1, "epochs": 20, "seed": seed}
    reproduce_module.merge_row(tmp_path / "table2.json", 2, "paper", row("cnn+cnn-hs", 90.0, 0))
    reproduce_module.merge_row(tmp_path / "table2-anneal.json", 2, "anneal", row("cnn+cnn-hs", 92.0, 0))
    reproduce_module.merge_row(tmp_path / "table2.json", 2, "paper", row("mlp+mlp-hb", 85.0, 0))
    for seed, paper, anneal in ((1, 89.0, 91.0), (2, 88.0, None)):
        folder = tmp_path / "seeds" / "cnn+cnn-hs" / f"seed{seed}"
        reproduce_module.merge_row(folder / "table2.json", 2, "paper", row("cnn+cnn-hs", paper, seed))
        if anneal is not None:
            reproduce_module.merge_row(folder / "table2-anneal.json", 2, "anneal", row("cnn+cnn-hs", anneal, seed))
    reproduce_module.merge_row(tmp_path / "seeds" / "k8-r4-hb-g3p1" / "seed1" / "table-k8.json", "k8", "paper",
                               row("k8-r4-hb-g3p1", 60.0, 1))  # seed 0 not trained yet: one seed, no line
    got = reproduce_module.seed_accuracies(tmp_path)
    assert [(r["table"], r["cell"], r["recipe"], r["by_seed"]) for r in got] == [
        (2, "cnn+cnn-hs", "paper", {0: 90.0, 1: 89.0, 2: 88.0}), (2, "cnn+cnn-hs", "anneal", {0: 92.0, 1: 91.0})]
    assert got[0]["mean"] == pytest.approx(89.0) and got[0]["stdev"] == pytest.approx(1.0)
    assert "| 2 | cnn+cnn-hs | paper | 86.62 | 90.00 / 89.00 / 88.00 (seeds 0, 1, 2) | 89.00 ± 1.00 | 3 |" in \
        reproduce_module.render_seeds(tmp_path)


def test_render_rewrites_each_table_under_its_marker_and_keeps_the_prose(tmp_path):
    from click.testing import CliRunner

    for t, cell in ((2, reproduce_module.TABLE2[0]), (3, reproduce_module.TABLE3[0])):
        reproduce_module.merge_row(tmp_path / f"table{t}.json", t, "paper",
                                   {"cell": cell.name, "accuracy": 88.0, "delta": 0.7, "params": 469_754, "epochs": 20})
    doc = tmp_path / "results.md"
    stale = "| cell | stale |\n|---|---|\n| old | row |"
    doc.write_text(f"# intro\n\n{marker(2)}\n{stale}\n\nbetween\n\n{marker(3)}\n{stale}\n\nprose after\n")
    run = lambda *more: CliRunner().invoke(cli.main, ["reproduce", "render", str(doc), "--results-dir", str(tmp_path), *more])
    out = run()
    assert out.exit_code == 0 and out.output.count("re-rendered") == 2, out.output
    assert doc.read_text() == (f"# intro\n\n{marker(2)}\n{render_markdown(2, tmp_path)}\n\nbetween\n\n"
                               f"{marker(3)}\n{render_markdown(3, tmp_path)}\n\nprose after\n")
    assert run().output.count("already matches") == 2  # idempotent
    doc.write_text(f"{marker(3)}\n| old |\n")  # a table at the end of the file; only the tables it marks
    assert render_into(doc, None, tmp_path) == {3: True}
    assert doc.read_text() == f"{marker(3)}\n{render_markdown(3, tmp_path)}\n"
    out = run("--table", "2")
    assert out.exit_code == 2 and "no line" in out.output and "table 2" in out.output
    doc.write_text("no tables here\n")
    with pytest.raises(ValueError, match="no table marker"):
        render_into(doc, None, tmp_path)


def test_the_old_flags_name_the_subcommand_that_replaced_them():
    from click.testing import CliRunner

    for args, new in ((["--table", "2", "--check", "--only", "x"], "edgecc reproduce check --table 2 --only x"),
                      (["--table", "3", "--estimate"], "edgecc reproduce estimate --table 3"),
                      (["--status", "--table", "2"], "edgecc reproduce status --table 2"),
                      (["--table", "2", "--readme", "README.md"], "edgecc reproduce render README.md --table 2"),
                      (["--table", "2", "--only", "baseline-mlp"], "edgecc reproduce run --table 2 --only baseline-mlp")):
        out = CliRunner().invoke(cli.main, ["reproduce", *args])
        assert out.exit_code == 2 and f"`{new}`" in out.output, out.output
    assert "render" in CliRunner().invoke(cli.main, ["reproduce", "--help"]).output


def test_the_cli_offers_every_recipe():
    from edgecc.train import WEIGHT_INITS

    assert cli_options.RECIPES == RECIPES
    assert cli_options.WEIGHT_INITS == WEIGHT_INITS  # and every init


def test_training_from_a_model_of_another_scheme_is_refused(tmp_path):
    s = Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")
    save_model(tmp_path / "g1.safetensors", AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    cfg = TrainConfig.for_recipe("anneal", epochs=1, limit=64, threads=1, init=str(tmp_path / "g1.safetensors"))
    with pytest.raises(ValueError, match="different model"):
        train("aicc", Scheme(K=2, G=2, encoder="mlp", compute_arch="mlp"), cfg, tmp_path / "out.safetensors")
    with pytest.raises(ValueError, match="continues a trained model"):
        train("aicc", s, TrainConfig.for_recipe("anneal", epochs=1, limit=64), tmp_path / "out.safetensors")


def test_checkpoints_over_the_repository_limit_are_stored_in_int8(tmp_path, monkeypatch):
    """float16 above COMMIT_LIMIT; int8 only where float16 is still above GIT_LIMIT (the mlp+mlp-hs cell)."""
    s = Scheme(K=2, G=1, encoder="mlp", compute_arch="mlp")
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_model(path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    f32 = path.stat().st_size
    monkeypatch.setattr(reproduce_module, "COMMIT_LIMIT", f32 // 4)
    monkeypatch.setattr(reproduce_module, "GIT_LIMIT", f32 // 2 + 4096)
    assert _compact(path) == "f16" and read_header(path)["storage"] == "f16"
    save_model(path, AICC(s), {"kind": "aicc", "scheme": s.to_dict()})
    monkeypatch.setattr(reproduce_module, "GIT_LIMIT", f32 // 3)
    assert _compact(path) == "q8" and read_header(path)["storage"] == "q8" and path.stat().st_size <= f32 // 3
    load_model(path)


def test_committed_checkpoints_reevaluate_to_their_rows():
    """The rows in results/ come from the committed files: re-evaluating on this CPU gives the same accuracy."""
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "reproduce", "check", "--table", "2",
                        "--only", "baseline-mlp", "--only", "learned-code-mlp"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(" ok") for line in lines)


def test_estimate_times_each_cells_training_without_training(tmp_path):
    """estimate: real optimizer steps of each cell's model and batch, scaled to the run; no file written."""
    cfg = TrainConfig(epochs=20, limit=6400, threads=1)
    rows = reproduce_module.estimate(2, ["baseline-mlp", "learned-code-mlp", "mlp+mlp-hb"], cfg, steps=1)
    assert [r["cell"] for r in rows] == ["mlp+mlp-hb", "baseline-mlp", "learned-code-mlp"]  # the paper's order
    committed = reproduce_module.read_rows("results", 2)
    for r in rows:
        assert r["step_seconds"] > 0 and r["batch"] == 64
        assert r["steps_per_epoch"] == -(-(6400 // r["K"]) // 64)  # every image once per epoch, in groups of K
        assert r["run_seconds"] == pytest.approx(r["step_seconds"] * r["steps_per_epoch"] * 20)
        assert r["params"] == committed[r["cell"]]["params"]  # the model that run trains
    assert rows[0]["K"] == 2 and rows[1]["K"] == 1
    with pytest.raises(ValueError, match="unknown cell"):
        reproduce_module.estimate(3, ["mlp+mlp-hb"], cfg)

    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "reproduce", "estimate", "--table", "3", "--only", "k2-r3-hs-g1p2",
                        "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "k2-r3-hs-g1p2        batch  64" in r.stdout and r.stdout.splitlines()[-1].startswith("all")
    assert list(tmp_path.iterdir()) == []


def write_idx_dir(folder, images, labels, test_images, test_labels):
    """A Fashion-MNIST folder of real images in the dataset's own IDX format (a few of them: fast training)."""
    import numpy as np

    folder.mkdir()
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                      ("t10k-images-idx3-ubyte", test_images), ("t10k-labels-idx1-ubyte", test_labels)):
        arr = np.ascontiguousarray(arr, dtype=np.uint8)
        head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (folder / stem).write_bytes(head + arr.tobytes())
    return folder


def cl_params(c_in, width):
    """SPEC §2's CL stack: 3x3 c_in->C, five 3x3 C->C, a 1x1 C->1, each with a bias."""
    return (9 * c_in * width + width) + 5 * (9 * width * width + width) + (width + 1)


def test_table_k8_names_its_cells_and_estimates_them_at_the_papers_batch_rule(tmp_path):
    """K=8 cells: CL networks of width 20·K = 160 (SPEC §2), batch 128 // K = 16 groups, N = 9 workers."""
    from click.testing import CliRunner

    from edgecc.cli.models import TABLE_NAMES

    assert [str(t) for t in reproduce_module.TABLES] == TABLE_NAMES  # the CLI offers every table
    assert reproduce_module.table_key("k8") == "k8" and reproduce_module.table_key("3") == 3
    with pytest.raises(ValueError, match="unknown table"):
        reproduce_module.table_key("k9")
    cells = reproduce_module.select("k8", None)
    assert [(c.name, c.scheme.K, c.scheme.R, c.N, c.paper, c.weight_init) for c in cells] == [  # low R trains first
        ("k8-r4-hb-g3p1", 8, 4, 9, None, "default"), ("k8-r8-hb-g7p1", 8, 8, 9, None, "default"),
        ("k8-r4-hb-g3p1-he", 8, 4, 9, None, "variance"), ("k8-r8-hb-g7p1-he", 8, 8, 9, None, "variance"),
        ("k8-r8-hb-g7p1-he-cheb", 8, 8, 9, None, "variance")]  # its own points: tests/test_own_points.py
    # the He-init cells are the same cells but for the init (beyond the paper), and train with it
    assert [c.scheme for c in cells[2:4]] == [c.scheme for c in cells[:2]]
    assert reproduce_module._cell_config(cells[2], TrainConfig()).weight_init == "variance"
    assert reproduce_module._cell_config(cells[0], TrainConfig()).weight_init == "default"
    assert reproduce_module.results_name("k8", "paper") == "table-k8"
    assert reproduce_module.checkpoint_path("results", "k8", "anneal", "k8-r8-hb-g7p1").as_posix() == \
        "results/checkpoints/table-k8-anneal/k8-r8-hb-g7p1.safetensors"
    assert TrainConfig().batch_for(8) == 16
    # Adam's lr: the protocol's 1e-3 collapses the width-160 encoders (benchmarks/k8_first_steps.py); K8_LR here only
    assert [reproduce_module._cell_config(c, TrainConfig()).lr for c in cells] == [reproduce_module.K8_LR] * 5 == [1e-4] * 5
    assert reproduce_module._cell_config(reproduce_module.TABLE3[0], TrainConfig()).lr == 1e-3

    # one real optimizer step of the R=4 model (batch 1 keeps it short; the run's batch is 16)
    (row,) = reproduce_module.estimate("k8", ["k8-r4-hb-g3p1"], TrainConfig(batch=1, threads=1), steps=1)
    assert (row["K"], row["batch"], row["steps_per_epoch"]) == (8, 1, 60_000 // 8)
    base_mlp = 784 * 200 + 200 + 200 * 100 + 100 + 100 * 10 + 10
    assert row["params"] == 4 * cl_params(8, 160) + cl_params(1, 160) + base_mlp == 5_991_235  # Γ_0..Γ_3 + H_B
    assert row["step_seconds"] > 0 and row["run_seconds"] == pytest.approx(row["step_seconds"] * 7500 * 20)

    out = CliRunner().invoke(cli.main, ["reproduce", "estimate", "--table", "k8", "--only", "k2-r3-hb-g2p1"])
    assert out.exit_code == 2 and "k8-r8-hb-g7p1" in out.output  # the cells table k8 does have
    out = CliRunner().invoke(cli.main, ["reproduce", "check", "--table", "k8", "--results-dir", str(tmp_path)])
    assert out.exit_code == 1 and "no results for table k8" in out.output and "Traceback" not in out.output


def test_table_k8_status_and_rows_without_a_paper_figure(tmp_path):
    """A K=8 cell killed after one of its 20 epochs is partial (real training, a few real images); a finished
    row has no paper figure to compare with, and renders and reports so."""
    from click.testing import CliRunner

    from edgecc.data import load_sample

    images, labels = load_sample()
    data = write_idx_dir(tmp_path / "data", images[:64], labels[:64], images[64:80], labels[64:80])
    results, runs = tmp_path / "results", tmp_path / "runs"
    cell = reproduce_module.TABLE_K8[0]
    train(cell.kind, cell.scheme, TrainConfig(epochs=1, threads=1, data_dir=str(data)), tmp_path / "p.safetensors",
          run_dir=runs / "table-k8" / cell.name, resume=True)
    st = {r["cell"]: r for r in reproduce_module.status("k8", "paper", results, runs)}
    assert st[cell.name]["state"] == "partial" and (st[cell.name]["epochs"], st[cell.name]["of"]) == (1, 20)
    assert st["k8-r8-hb-g7p1"] == {"cell": "k8-r8-hb-g7p1", "paper": None, "state": "not started"}

    reproduce_module.merge_row(results / "table-k8.json", "k8", "paper",
                               {"cell": "k8-r8-hb-g7p1", "accuracy": 70.5, "delta": None, "params": 10_649_799,
                                "epochs": 20, "train_seconds": 3600.0})
    assert reproduce_module.render_markdown("k8", results).splitlines()[2] == "| k8-r8-hb-g7p1 | – | 70.50 | – | 10,649,799 | 20 |"
    out = CliRunner().invoke(cli.main, ["reproduce", "status", "--table", "k8", "--results-dir", str(results),
                                        "--runs-dir", str(runs)])
    assert out.exit_code == 0, out.output
    assert re.search(r"^k8-r4-hb-g3p1 +partial  1 of 20 epochs, test accuracy", out.output, re.M)
    assert re.search(r"^k8-r8-hb-g7p1 +done      70.50 \(no paper figure\), 20 epochs", out.output, re.M)
