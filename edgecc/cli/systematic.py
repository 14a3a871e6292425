"""`edgecc systematic-model`: the systematic encoder (ours, not the paper's) as an AICC model file, built from a
trained centralized CNN with no training (nets/systematic.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click

from .group import main


@main.command("systematic-model")
@click.option("--base", required=True, type=click.Path(dir_okay=False, exists=True),
              help="a centralized-cnn model file (e.g. results/checkpoints/table2/baseline-cnn.safetensors)")
@click.option("--K", "K", type=int, default=8, show_default=True, help="images per group; any K of N workers decode")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="AICC model file to write (.safetensors)")
def systematic_model(base, K, out):
    """Write an AICC model running the systematic encoder (ours, not the paper's): the master runs BASE up to its
    100-feature layer and Lagrange-combines K images' features at the workers' points cos(nπ/(N−1)) over the K
    Chebyshev β's (both recorded in the file); each worker runs BASE's last affine layer; any K answers decode
    BASE's own logits. Run it as any AICC model: `edgecc eval OUT --N 9`, `edgecc master --model OUT ...`."""
    from ..coding.schemes import SYSTEMATIC_LABEL
    from ..errors import ConfigError
    from ..modelfile import load_model, save_model
    from ..nets.systematic import SystematicAICC
    from ..protocol.images import model_classes, model_image

    if K < 2:
        raise click.BadParameter(f"the {SYSTEMATIC_LABEL} needs K >= 2 images per group, got {K} "
                                 "(one image per group is replication)", param_hint="--K")
    net, info = load_model(base)
    if info["kind"] != "centralized-cnn":
        raise click.BadParameter(f"{base} holds a {info['kind']!r} model; the {SYSTEMATIC_LABEL} is built on a "
                                 "centralized-cnn model file", param_hint="--base")
    image, classes = model_image(info), model_classes(info)
    try:
        model = SystematicAICC.from_base(net, K, image, classes)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--base") from None
    out_info = {"kind": "aicc", "scheme": model.scheme.to_dict(), "design": SYSTEMATIC_LABEL,
                "base": {"file": str(base), "sha256": hashlib.sha256(Path(base).read_bytes()).hexdigest()},
                **{k: info[k] for k in ("image", "classes") if k in info}}  # a paper-shaped base's file leaves them out
    save_model(out, model, out_info)
    click.echo(json.dumps({"out": out, "scheme": model.scheme.label(), "K": K, "R": K,
                           "betas": list(model.scheme.data_points), "worker_points": model.scheme.worker_points}))
