"""The master side, the schemes, scenarios and the service take the image shape from the model
(protocol/images.py): no code there may spell the paper's 28×28 images (784 pixels) itself. Comments
and strings are not code and may cite the paper's numbers."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgecc"
# the rooms that run models of any image; fuzzing/, schemes_table.py and bench/ still reproduce the paper's
SHAPE_FREE = ["schemes", "master", "serve", "scenario", "cli", "evaluate.py", "export.py", "train.py", "datasets"]
PAPER = re.compile(r"\b784\b|\b28\s*,\s*28\b|\(\s*28\s*,")


def _code(path: Path) -> str:
    """The file's code with comments and strings blanked out."""
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.STRING) and not (
                hasattr(tokenize, "FSTRING_MIDDLE") and tok.type == tokenize.FSTRING_MIDDLE):
            out.append(tok.string)
    return " ".join(out)


def test_the_runtime_takes_the_image_shape_from_the_model():
    files = [p for room in SHAPE_FREE for p in ([PACKAGE / room] if room.endswith(".py") else (PACKAGE / room).rglob("*.py"))]
    assert len(files) > 20
    found = sorted(f"{p.relative_to(PACKAGE)}: {m.group(0)!r}" for p in files for m in PAPER.finditer(_code(p)))
    assert found == []
