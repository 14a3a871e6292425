"""The most slots of a K=8 group any H_B model of encoder degree G can classify correctly (table k8's choice of G).

With an affine H_B and an encoder E of degree G in the point, each logit of D(β) = H_B(E(β)) is a polynomial of
degree G in β, and so is the difference of two classes' logits: it changes sign at most G times. Along
β_1 < ... < β_K two classes can therefore alternate at most G + 1 times as the argmax (the argmax sequence is a
Davenport–Schinzel sequence of order G). A group whose labels alternate more cannot be classified fully: the
best any model can do is the largest subset of its slots whose labels obey that rule.

Printed: that ceiling, as a share of slots, exactly over uniformly random labels (every label pattern of K
slots, weighted by its probability) and over the Fashion-MNIST test set grouped in order as edgecc evaluates it.

    python benchmarks/k8_ceiling.py [--K 8] [--G 1 2 3 7]
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def alternations_ok(labels: tuple[int, ...], G: int) -> bool:
    """No two classes alternate more than G + 1 times along the sequence."""
    for a, b in itertools.combinations(set(labels), 2):
        runs = [k for k, _ in itertools.groupby(x for x in labels if x in (a, b))]
        if len(runs) > G + 1:
            return False
    return True


@lru_cache(maxsize=None)
def best(pattern: tuple[int, ...], G: int) -> int:
    """Most slots of a label pattern (labels renumbered by first appearance) a degree-G model can get right."""
    K = len(pattern)
    for m in range(K, 0, -1):
        if any(alternations_ok(tuple(pattern[i] for i in c), G) for c in itertools.combinations(range(K), m)):
            return m
    return 0


def canonical(labels) -> tuple[int, ...]:
    first: dict[int, int] = {}
    return tuple(first.setdefault(int(x), len(first)) for x in labels)


def patterns(K: int, classes: int = 10):
    """Every label pattern of K slots (a set partition, blocks numbered by first appearance) and its probability
    under uniform labels from `classes` classes."""
    def grow(prefix: tuple[int, ...], blocks: int):
        if len(prefix) == K:
            yield prefix, math.perm(classes, blocks) / classes ** K
            return
        for b in range(min(blocks + 1, classes)):
            yield from grow(prefix + (b,), max(blocks, b + 1))
    yield from grow((), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, default=8)
    ap.add_argument("--G", type=int, nargs="+", default=[1, 2, 3, 7])
    args = ap.parse_args()
    from edgecc.data import load_split

    _, y = load_split("test")
    groups = y[: y.size - y.size % args.K].reshape(-1, args.K)
    print(f"K={args.K}: share of slots the best degree-G model classifies correctly")
    print(f"{'G':>3} {'R':>3} {'uniform labels':>15} {'test set':>9}")
    for G in args.G:
        uniform = sum(p * best(pat, G) for pat, p in patterns(args.K)) / args.K
        test = sum(best(canonical(g), G) for g in groups) / groups.size
        print(f"{G:>3} {G + 1:>3} {100 * uniform:14.2f}% {100 * test:8.2f}%")


if __name__ == "__main__":
    main()
