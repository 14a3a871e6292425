"""How much of its input a fresh encoder stack passes on, layer by layer, at K = 2, 4 and 8, under PyTorch's
default init and under the variance-preserving (He) init (TrainConfig.weight_init; docs/k8.md).

For Γ_0 of one fresh seed-0 cell per K (the cell's own networks, built as `edgecc reproduce` builds them), on
16 groups of real training images: after the input and after each of the 6 ReLU layers and the 1×1 head, the
std of the activations, and their spread across the 16 groups (std over the groups, mean over channels and
pixels). A spread far below the input's means the output barely depends on the input.

    python benchmarks/init_signal.py

Seconds on a CPU. Output: results/table-k8-remedies.txt (third part).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CELLS = (("2", "cnn+cnn-hb"), ("3", "k4-r5-hb-g4p1"), ("k8", "k8-r4-hb-g3p1"))  # (table, cell): K = 2, 4, 8


def layers(stack, x):
    """The input, then each layer's output (ReLU applied where the stack applies it)."""
    import torch

    out = [x]
    for conv in stack.convs:
        x = torch.relu(conv(x)) if stack.activation else conv(x)
        out.append(x)
    out.append(stack.head(x))
    return out


def main() -> None:
    import torch

    from edgecc import data
    from edgecc.reproduce import TABLES, table_key
    from edgecc.train import TrainConfig, _start

    torch.set_num_threads(1)
    x_np, _ = data.load_split("train")
    print("cell, K, init: std / spread across 16 groups, after the input, 6 ReLU layers and the 1x1 head of Γ_0")
    for table, name in CELLS:
        cell = next(c for c in TABLES[table_key(table)] if c.name == name)
        for init in ("default", "variance"):
            _, K, _, model, _ = _start(cell.kind, cell.scheme, TrainConfig(seed=0, threads=1, weight_init=init), None)
            x = torch.from_numpy(data.to_float(x_np[: 16 * K])).reshape(16, K, 28, 28)
            with torch.no_grad():
                acts = layers(model.gamma.stacks[0], x)
            cols = " | ".join(f"{a.std().item():.2e} / {a.std(0).mean().item():.2e}" for a in acts)
            print(f"{name}, K={K}, {init}: {cols}")


if __name__ == "__main__":
    main()
