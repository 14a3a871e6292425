"""`edgecc compare --base FILE`: a centralized model file (here an untrained ResNet-18) as the base of ApproxIFER,
replication and uncoded, through the command's own code path, on a few sample images."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgecc import schemes_table as st
from edgecc.cli import main
from edgecc.modelfile import save_model
from edgecc.nets.resnet import ResNet18


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "centralized-resnet18.safetensors"
    save_model(path, ResNet18(), {"kind": "centralized-resnet18"})
    return path


def test_compare_base_writes_the_base_models_rows_beside_the_published_figure(resnet_file, tmp_path):
    results, runs = tmp_path / "results", tmp_path / "runs"
    results.mkdir()
    args = ["compare", "--base", str(resnet_file), "--images", "sample", "--limit", "16", "--runs-dir", str(runs),
            "--results-dir", str(results)]
    for cell in ("approxifer-resnet18-K2-S1", "replication-resnet18-K2-S1", "uncoded-resnet18-K2-S1", "approxifer-resnet18-K8-S1"):
        args += ["--only", cell]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    table = json.loads((results / "schemes-resnet18.json").read_text())
    rows = {r["cell"]: r for r in table["rows"]}
    # the model alone always runs (every row's 'rel.'); only the ApproxIFER point set the table shows (--points n)
    assert set(rows) == {"base-resnet18", "approxifer-resnet18-K2-S1-n", "replication-resnet18-K2-S1",
                         "uncoded-resnet18-K2-S1", "approxifer-resnet18-K8-S1-n"}
    assert all(r["base"] == "resnet18" and r["images"] <= 16 for r in table["rows"])
    assert rows["replication-resnet18-K2-S1"]["no_straggler"] == rows["base-resnet18"]["no_straggler"] == table["bases"]["resnet18"]
    assert rows["approxifer-resnet18-K2-S1-n"]["straggler_sets"] == 3 and rows["approxifer-resnet18-K8-S1-n"]["paper"] == 0.74
    assert table["model"]["kind"] == "centralized-resnet18" and table["worker_seconds_per_image"]["resnet18"] > 0
    md = (results / "schemes-resnet18.md").read_text()
    assert md.startswith("# Straggler-mitigation schemes over a ResNet-18 base")
    assert "| approxifer | resnet18 | 2 | 1 | 3 |" in md and "| replication ✗ | resnet18 | 2 | 1 | 3 |" in md
    assert "| 74.0 (0.76) |" in next(line for line in md.splitlines() if line.startswith("| approxifer | resnet18 | 8 | 1 | 9 |"))
    assert "Command: `edgecc compare --base " in md and "MLP —" not in md and "(ResNet-18 " in md
    assert not (results / "schemes.md").exists()  # the main table is left alone
    # cached per cell under the file's content id: a second run computes nothing
    assert len(list(runs.glob("resnet18-*/*.json"))) == 5
    again = CliRunner().invoke(main, args + ["--cached-only"])
    assert again.exit_code == 0 and json.loads((results / "schemes-resnet18.json").read_text())["rows"] == table["rows"]
    # the main table links its companions
    _, m = st.write(st.assemble([], None, 0), results)
    assert "[schemes-resnet18.md](schemes-resnet18.md)" in m.read_text()


def test_compare_base_refuses_a_model_that_is_not_centralized(tmp_path):
    res = CliRunner().invoke(main, ["compare", "--base", "default", "--images", "sample", "--limit", "8",
                                    "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and "'aicc' model" in res.output


def test_resnet18_flops_counts_every_convolution_and_the_linear_layer():
    model, flops = ResNet18().eval(), []

    def hook(m, inp, out):
        flops.append(2 * out.numel() * (m.weight[0].numel() if isinstance(m, torch.nn.Conv2d) else m.in_features))

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.inference_mode():
        model(torch.zeros(1, 1, 28, 28))
    assert st.resnet18_flops() == sum(flops) and st.worker_flops("resnet18") == sum(flops)
    assert np.isclose(st.resnet18_flops() / 1e9, 0.91, atol=0.01)
