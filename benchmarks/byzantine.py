"""Accuracy and liar detection with E lying workers among N = R + 2E (issue: Byzantine workers).

For every liar set of size E (all of them, or a sample), worker outputs H(E(α_n)) are computed
in-process for the test images, the liars' outputs are replaced by `edgecc.worker.faults.lie`
(random / scaled / adversarial), and the master's robust decoder (coding/robust.py) decodes.
Reports accuracy next to the honest accuracy, the detection rate (liar flagged in a group) and
false positives (honest worker flagged).

    python benchmarks/byzantine.py [--model default] [--limit N] [--out results/byzantine.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--images", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default="results/byzantine.json")
    args = ap.parse_args()

    import torch

    from edgecc.coding.lagrange import Decoder
    from edgecc.coding.robust import robust_decode
    from edgecc.coding.schemes import Scheme, default_alphas
    from edgecc.data import to_float
    from edgecc.datasets import load_arrays
    from edgecc.evaluate import aicc_outputs, group
    from edgecc.modelfile import atomic_write, load_model
    from edgecc.worker.faults import LIES, lie

    torch.set_num_threads(1)
    model, info = load_model(args.model)
    scheme = Scheme.from_dict(info["scheme"])
    images, labels = load_arrays(args.images)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    x, y = group(to_float(images), labels.astype(np.int64), scheme.K)
    rows = []
    t0 = time.time()
    for E in (1, 2):
        N = scheme.R + 2 * E
        alphas = default_alphas(N)
        _, outs = aicc_outputs(model, info, x, alphas)  # (G, N, 10) float32, as workers compute them
        honest = Decoder(alphas, scheme.betas(), scheme.R).decode({n: outs[:, n] for n in range(scheme.R)})
        honest_acc = 100.0 * float((honest.argmax(-1) == y).mean())
        for kind in LIES:
            accs, detected, false_pos = [], [], []
            for liars in itertools.combinations(range(N), E):
                results = {n: outs[:, n] for n in range(N)}
                for w in liars:
                    results[w] = lie(kind, outs[:, w], w)
                res = robust_decode(alphas, scheme.betas(), scheme.R, E, results)
                accs.append(100.0 * float((res.logits.argmax(-1) == y).mean()))
                liar_rows = [res.workers.index(w) for w in liars]
                honest_rows = [i for i in range(N) if res.workers[i] not in liars]
                detected.append(float(res.suspects[liar_rows].mean()))
                false_pos.append(float(res.suspects[honest_rows].mean()))
            row = {"E": E, "N": N, "R": scheme.R, "lie": kind, "liar_sets": len(accs), "honest_accuracy": honest_acc,
                   "accuracy_min": min(accs), "accuracy_mean": float(np.mean(accs)),
                   "detection_rate": float(np.mean(detected)), "false_positive_rate": float(np.mean(false_pos))}
            rows.append(row)
            print(json.dumps(row))
    doc = {"model": args.model, "scheme": scheme.label(), "images": int(y.size), "rows": rows,
           "seconds": round(time.time() - t0, 1), "machine": {"platform": platform.platform(), "python": platform.python_version()}}
    atomic_write(args.out, (json.dumps(doc, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
