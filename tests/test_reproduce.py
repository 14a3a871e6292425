"""`edgecc reproduce`: rows merge across runs, recipes get their own column, committed checkpoints re-evaluate."""

import json
import subprocess
import sys

from edgecc.reproduce import render_markdown, reproduce
from edgecc.train import TrainConfig


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


def test_committed_checkpoints_reevaluate_to_their_rows():
    """The rows in results/ come from the committed files: re-evaluating on this CPU gives the same accuracy."""
    r = subprocess.run([sys.executable, "-m", "edgecc.cli", "reproduce", "--table", "2", "--check",
                        "--only", "baseline-mlp", "--only", "learned-code-mlp"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(" ok") for line in lines)
