"""benchmarks/device_reproduce.py: the queue of cells without a row, and the round trip of a finished
cell from the GPU machine's $OUT back into results/ (what a session with a device does)."""

import importlib.util
import json
import shutil
from pathlib import Path

from edgecc.reproduce import TABLES, check

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("device_reproduce", ROOT / "benchmarks" / "device_reproduce.py")
dr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dr)


def test_the_queue_names_real_cells_and_skips_those_with_rows():
    names = {t: {c.name for c in TABLES[t]} for t in TABLES}
    assert all(c in names[t] for t, _, c in dr.QUEUE)
    done = {r["cell"] for r in json.loads((ROOT / "results" / "table2.json").read_text())["rows"]}
    assert not any(t == 2 and r == "paper" and c in done for t, r, c in dr.pending(ROOT / "results"))


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
    dr._pack(tmp_path / "out", src, 2, "paper", "baseline-mlp")
    dr.unpack(tmp_path / "out", dst)
    doc = json.loads((dst / "table2.json").read_text())
    assert [r["cell"] for r in doc["rows"]] == ["baseline-mlp", "learned-code-mlp"] and doc["protocol"] == "p"
    assert [r["ok"] for r in check(2, dst, ["baseline-mlp"])] == [True]
