"""benchmarks/device_reproduce.py: the queue of cells without a row, and the round trip of a finished
cell from the GPU machine's $OUT back into results/."""

import importlib.util
import json
import shutil
import time
from pathlib import Path

import pytest

from edgecc.reproduce import TABLES, check, seed_accuracies

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("device_reproduce", ROOT / "benchmarks" / "device_reproduce.py")
dr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dr)


def test_the_queue_names_real_cells_and_skips_those_with_rows():
    names = {t: {c.name for c in TABLES[t]} for t in TABLES}
    assert all(j.cell in names[j.table] for j in dr.QUEUE) and len(set(dr.QUEUE)) == len(dr.QUEUE)
    done = {r["cell"] for r in json.loads((ROOT / "results" / "table2.json").read_text())["rows"]}
    assert not any(j.table == 2 and j.recipe == "paper" and j.seed == 0 and j.cell in done for j in dr.pending(ROOT / "results"))
    # a seed's run counts as done by its own row in results/seeds/CELL/seedN/, not by the table's seed-0 row
    seeded = {r["cell"] for r in json.loads((ROOT / "results" / "seeds" / "cnn+cnn-hs" / "seed1" / "table2.json").read_text())["rows"]}
    assert "cnn+cnn-hs" in seeded and dr.Job(2, "paper", "cnn+cnn-hs", 1) not in dr.pending(ROOT / "results", [(2, "paper", "cnn+cnn-hs", 1)])
    assert dr.pending(ROOT / "results", [(2, "paper", "cnn+cnn-hs", 7)]) == [dr.Job(2, "paper", "cnn+cnn-hs", 7)]


def test_every_queued_cell_comes_back_under_a_name_the_device_returns():
    """$OUT gives back only names of letters, digits, '.', '_' and '-': a '+' in a cell's name (mlp+cnn-hs)
    would keep its tarball from coming back."""
    names = [dr.tarball_name(dr.Job(t, r, c, s)) for t in TABLES for r in ("paper", "anneal") for c in (x.name for x in TABLES[t])
             for s in (0, 1, 2)]
    assert all(dr.SAFE_NAME.fullmatch(n) for n in names) and len(set(names)) == len(names)


def test_a_finished_cell_travels_back_as_one_tarball(tmp_path):
    """pack on the device (checkpoint + row), unpack here: the row merges in the paper's order and the
    checkpoint re-evaluates to it."""
    src, dst = tmp_path / "device", tmp_path / "here"
    (src / "checkpoints" / "table2").mkdir(parents=True)
    shutil.copy(ROOT / "results" / "checkpoints" / "table2" / "baseline-mlp.safetensors", src / "checkpoints" / "table2")
    rows = json.loads((ROOT / "results" / "table2.json").read_text())["rows"]
    (src / "table2.json").write_text(json.dumps({"table": 2, "rows": [r for r in rows if r["cell"] == "baseline-mlp"]}))
    dst.mkdir()
    (dst / "table2.json").write_text(json.dumps({"table": 2, "recipe": "paper", "protocol": "p",
                                                 "rows": [r for r in rows if r["cell"] == "learned-code-mlp"]}))
    dr._pack(tmp_path / "out", src, dr.Job(2, "paper", "baseline-mlp"))
    dr.unpack(tmp_path / "out", dst, aside=tmp_path / "aside" / "checkpoints")
    doc = json.loads((dst / "table2.json").read_text())
    assert [r["cell"] for r in doc["rows"]] == ["baseline-mlp", "learned-code-mlp"] and doc["protocol"] == "p"
    assert [r["ok"] for r in check(2, dst, ["baseline-mlp"])] == [True]


def test_cells_train_in_parallel_and_come_back(tmp_path):
    """Two real cells (1 epoch on 256 images, CPU; the MLP cells, cheap to evaluate) at once: both rows land in
    one table file (merged under the lock), each finished cell is one tarball, and unpacking them elsewhere
    gives the same rows."""
    results, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    done = dr.run(600, "cpu", tmp_path / "out", results, str(tmp_path / "runs"), parallel=2,
                  queue=dr.named(["mlp+mlp-hb", "baseline-mlp"]), extra=["--epochs=1", "--limit=256"])
    assert sorted(j.cell for j in done) == ["baseline-mlp", "mlp+mlp-hb"]
    rows = json.loads((results / "table2.json").read_text())["rows"]
    assert [r["cell"] for r in rows] == ["mlp+mlp-hb", "baseline-mlp"]  # the paper's order, neither lost
    assert all(r["epochs"] == 1 and r["train_images"] == 256 and r["device"] == "cpu" for r in rows)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table2.baseline-mlp.tgz", "table2.mlp_mlp-hb.tgz"]
    dr.unpack(tmp_path / "out", elsewhere, aside=tmp_path / "aside" / "checkpoints")
    back = json.loads((elsewhere / "table2.json").read_text())
    assert [r["accuracy"] for r in back["rows"]] == [r["accuracy"] for r in rows] and back["protocol"].startswith("paper")
    assert all(r["ok"] for r in check(2, elsewhere))


def test_the_deadline_stops_a_cell_and_brings_nothing_half_done(tmp_path):
    t0 = time.monotonic()
    done = dr.run(4, "cpu", tmp_path / "out", tmp_path / "results", str(tmp_path / "runs"), queue=dr.named(["cnn+cnn-hs"]),
                  min_left=1)
    assert done == [] and time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists() and not (tmp_path / "results" / "table2.json").exists()


def test_prepare_moves_the_checkpoints_aside_and_unpack_puts_them_back(tmp_path):
    """The device call sends at most 64 MiB: the dataset travels, the committed checkpoints wait in an ignored folder."""
    results, aside, data = tmp_path / "results", tmp_path / ".device-aside" / "checkpoints", tmp_path / ".device-data"
    (results / "checkpoints" / "table2").mkdir(parents=True)
    old = results / "checkpoints" / "table2" / "old.safetensors"
    old.write_bytes(b"committed")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"labels")
    dr.prepare(str(tmp_path / "src"), results, data, aside)
    assert (data / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"labels"
    assert not (results / "checkpoints").exists() and (aside / "table2" / "old.safetensors").is_file()
    (results / "checkpoints" / "table3").mkdir(parents=True)  # what the device brought back meanwhile
    (results / "checkpoints" / "table3" / "new.safetensors").write_bytes(b"new")
    dr.unpack(tmp_path / "nothing", results, aside)
    assert old.read_bytes() == b"committed" and (results / "checkpoints" / "table3" / "new.safetensors").is_file()
    assert not aside.parent.exists()


def test_an_anneal_cell_waits_for_its_paper_cell_and_continues_it(tmp_path):
    """Queued first, the anneal cell still starts only once its paper-protocol model exists (trained in the same
    call), and its row counts both trainings' epochs."""
    results = tmp_path / "results"
    queue = [(2, "anneal", "mlp+mlp-hb"), (2, "paper", "mlp+mlp-hb")]
    done = dr.run(600, "cpu", tmp_path / "out", results, str(tmp_path / "runs"), parallel=2, queue=queue,
                  extra=["--epochs=1", "--limit=256"])
    assert done == [dr.Job(2, "paper", "mlp+mlp-hb"), dr.Job(2, "anneal", "mlp+mlp-hb")]
    (row,) = json.loads((results / "table2-anneal.json").read_text())["rows"]
    assert row["epochs"] == 2 and row["recipe"] == "anneal"


def test_nothing_starts_where_the_starting_model_is_missing(tmp_path, capsys):
    assert dr.run(60, "cpu", tmp_path / "out", tmp_path / "results", str(tmp_path / "runs"),
                  queue=[(3, "anneal", "k4-r5-hb-g4p1")]) == []
    assert "wait for paper-protocol models" in capsys.readouterr().out


def test_prepare_carries_the_models_that_pending_anneal_cells_start_from(tmp_path):
    results, aside = tmp_path / "results", tmp_path / ".device-aside" / "checkpoints"
    (results / "checkpoints" / "table2").mkdir(parents=True)
    for cell in ("mlp+cnn-hs", "mlp+mlp-hb"):
        (results / "checkpoints" / "table2" / f"{cell}.safetensors").write_bytes(cell.encode())
    (tmp_path / "src").mkdir()
    dr.prepare(str(tmp_path / "src"), results, tmp_path / ".device-data", aside)
    # mlp+cnn-hs is queued for the anneal recipe (no results here: every cell is pending); mlp+mlp-hb is not
    assert (results / "checkpoints" / "table2" / "mlp+cnn-hs.safetensors").read_bytes() == b"mlp+cnn-hs"
    assert not (results / "checkpoints" / "table2" / "mlp+mlp-hb.safetensors").exists()
    dr.restore(results, aside)
    assert (results / "checkpoints" / "table2" / "mlp+mlp-hb.safetensors").read_bytes() == b"mlp+mlp-hb"


def test_a_seed_trains_into_its_own_folder_and_counts_in_the_seeds_table(tmp_path):
    """Seeds 0 and 1 of one cell (1 epoch on 256 images, CPU): seed 1's row and model land in
    results/seeds/CELL/seed1/, come back in a tarball of their own, and the seeds table sees both."""
    results, elsewhere = tmp_path / "results", tmp_path / "elsewhere"
    done = dr.run(600, "cpu", tmp_path / "out", results, str(tmp_path / "runs"), parallel=2,
                  queue=dr.named(["baseline-mlp"], seeds=[0, 1]), extra=["--epochs=1", "--limit=256"])
    assert sorted(done) == [dr.Job(2, "paper", "baseline-mlp", 0), dr.Job(2, "paper", "baseline-mlp", 1)]
    (row,) = json.loads((results / "seeds" / "baseline-mlp" / "seed1" / "table2.json").read_text())["rows"]
    assert row["seed"] == 1 and (results / "seeds" / "baseline-mlp" / "seed1" / "checkpoints" / "table2" / "baseline-mlp.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table2.baseline-mlp.seed1.tgz", "table2.baseline-mlp.tgz"]
    dr.unpack(tmp_path / "out", elsewhere, aside=tmp_path / "aside" / "checkpoints")
    (seeds,) = seed_accuracies(elsewhere)
    assert seeds["cell"] == "baseline-mlp" and set(seeds["by_seed"]) == {0, 1}
    assert all(r["ok"] for r in check(2, elsewhere / "seeds" / "baseline-mlp" / "seed1"))
    assert dr.pending(elsewhere, dr.named(["baseline-mlp"], seeds=[0, 1])) == []


def test_unpack_refuses_a_tarball_whose_model_would_land_elsewhere(tmp_path):
    """A tarball names where its model goes; any path but the run's own model file is refused, results/ untouched."""
    import io
    import tarfile

    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(out / "table2.baseline-mlp.tgz", "w:gz") as tar:
        for name, data in (("../escaped.safetensors", b"x"), ("row.json", json.dumps(
                {"table": 2, "recipe": "paper", "checkpoint": "../escaped.safetensors", "row": {"cell": "baseline-mlp"}}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(SystemExit, match="not where"):
        dr.unpack(out, tmp_path / "results", aside=tmp_path / "aside" / "checkpoints")
    assert not (tmp_path / "escaped.safetensors").exists() and not (tmp_path / "results" / "table2.json").exists()


def test_the_learned_code_s_seeds_are_left_to_seeds_py():
    with pytest.raises(SystemExit, match="seeds.py"):
        dr.named(["learned-code-mlp"], seeds=[1])
