"""Train the cells that have no row yet on a batch GPU machine, within one remote command, and bring them back.

The machine this is written for runs one command at a time on a copy of the working tree (at most 64 MiB
sent), at most 10 minutes each, has torch, numpy, click, msgpack and safetensors but neither the dataset
nor a package registry, and returns at most 8 files of 16 MiB written under $OUT. So:

    python benchmarks/device_reproduce.py prepare          # locally: the dataset into .device-data/ (git-ignored),
                                                           # results/checkpoints moved aside into .device-aside/
    python3 benchmarks/device_reproduce.py run --seconds 540 | tee $OUT/run.log   # remotely, with .device-data carried
    python benchmarks/device_reproduce.py unpack FILES_AT  # locally: checkpoints back, new rows and checkpoints in

A remote command gets at most 64 MiB of working tree; the committed checkpoints alone are more than that
(the MLP-encoder cells are 8-15 MB each) and training needs none of them, so `prepare` moves them into
the ignored .device-aside/ until `unpack` (or `restore`) puts them back: commit nothing in between.

`run` walks QUEUE in order, skipping cells that already have a row, and runs `edgecc reproduce run --device cuda`
for --parallel cells at a time until the deadline (reproduce resumes per epoch, so a cell cut off goes on in
the next call while the machine stays warm; rows merge under a lock). Each finished cell comes back as one
tarball with its checkpoint and its row; `unpack` merges the rows into results/table*.json. Anneal cells
wait in the queue until their paper-protocol model is there (trained earlier in the call, or carried by
`prepare`). Without a GPU, `run --device cpu --parallel 2 --seconds S` walks the same queue on this
machine, each cell resuming per epoch. Rows trained here record `"device": "cuda"` (docs/results.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from edgecc.reproduce import TABLES, checkpoint_path, merge_row, read_rows, results_name as _name, start_model  # noqa: E402

DATA = ROOT / ".device-data" / "fashion-mnist"
ASIDE = ROOT / ".device-aside" / "checkpoints"
# (table, recipe, cell): the paper-protocol cells first, then the improved-recipe column the issue asks for
QUEUE = [(2, "paper", c) for c in ("cnn+mlp-hb", "mlp+cnn-hb", "baseline-cnn", "mlp+cnn-hs", "cnn+mlp-hs", "cnn+cnn-hs")]
QUEUE += [(3, "paper", c) for c in ("k2-r3-hb-g2p1", "k2-r3-hs-g2p1", "k2-r3-hs-g1p2", "k4-r3-hb-g2p1", "k4-r3-hs-g2p1",
                                    "k4-r3-hs-g1p2", "k4-r5-hb-g4p1", "k4-r5-hs-g4p1", "k4-r5-hs-g2p2", "k4-r5-hs-g1p4")]
# the anneal recipe continues a cell's paper-protocol model: it waits for that cell (trained here, or carried)
QUEUE += [(3, "anneal", c) for c in ("k4-r5-hs-g4p1", "k4-r5-hb-g4p1", "k4-r5-hs-g2p2", "k4-r5-hs-g1p4", "k2-r3-hs-g2p1",
                                     "k2-r3-hs-g1p2", "k4-r3-hs-g2p1", "k2-r3-hb-g2p1", "k4-r3-hs-g1p2", "k4-r3-hb-g2p1")]
QUEUE += [(2, "anneal", c) for c in ("mlp+cnn-hs", "cnn+cnn-hb")]
# AICC at ApproxIFER's K=8 operating point (table k8): the He-init cells first (beyond the paper: they leave chance
# within ~40 steps, the default init is still at chance after 150, docs/k8.md), the cheaper low-R cell first
QUEUE += [("k8", "paper", c) for c in ("k8-r4-hb-g3p1-he", "k8-r8-hb-g7p1-he", "k8-r4-hb-g3p1", "k8-r8-hb-g7p1")]
# the best K=4 R=5 cell from the He init (beyond the paper; 60.01% after one epoch where the default init has 48.85)
QUEUE += [(3, "paper", "k4-r5-hs-g1p4-he"), (3, "anneal", "k4-r5-hs-g1p4-he")]
MAX_FILES = 7  # tarballs per call: a call brings back 8 files from $OUT, one is kept for the call's log
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # the only names a file from $OUT comes back under


def _rows(results: Path, table: int, recipe: str) -> dict[str, dict]:
    return read_rows(results, table, recipe) or {}


def pending(results: Path, queue: list[tuple[int, str, str]] = QUEUE) -> list[tuple[int, str, str]]:
    return [(t, r, c) for t, r, c in queue if c not in _rows(results, t, r)]


def named(cells: list[str], recipe: str = "paper") -> list[tuple[int, str, str]]:
    """(table, recipe, cell) for cells given by name, in the order given."""
    where = {c.name: t for t, cs in TABLES.items() for c in cs}
    unknown = [c for c in cells if c not in where]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; known: {', '.join(where)}")
    return [(where[c], recipe, c) for c in cells]


def prepare(src: str, results: Path, data: Path = DATA, aside: Path = ASIDE) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for f in Path(src).glob("*-ubyte*"):
        shutil.copy2(f, data / f.name)
    if (results / "checkpoints").is_dir() and not aside.exists():
        size = sum(f.stat().st_size for f in (results / "checkpoints").rglob("*") if f.is_file())
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(results / "checkpoints"), aside)
        print(f"moved {size / 2**20:.0f} MiB of checkpoints to {aside} for the device call; `unpack` or `restore` "
              "moves them back (commit nothing before)")
    # copies of the models that pending anneal cells start from travel with the tree
    for table, recipe, cell in pending(results):
        init = start_model(results, table, recipe, cell)
        kept = init and aside / init.relative_to(results / "checkpoints")
        if kept and kept.is_file() and not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept, init)
            print(f"carrying {init} ({init.stat().st_size / 2**20:.1f} MiB) for {_name(table, recipe)} {cell}")
    print(f"{data}: {sorted(p.name for p in data.iterdir())}; carry '.device-data' (.gitignore names it)")


def run(seconds: float, device: str, out: Path, results: Path, runs: str = "runs/reproduce", parallel: int = 5,
        queue: list[tuple[int, str, str]] = QUEUE, extra: list[str] | None = None, min_left: float = 30) -> list[tuple[int, str, str]]:
    """Train pending cells, `parallel` at a time (one process each: these small networks leave a GPU mostly idle,
    so cells side by side finish sooner than one after another; docs/results.md has the measurement),
    until `seconds` have passed (none starts with under `min_left` left); pack each finished cell into `out`;
    kill what still runs at the deadline (it resumes from its last epoch)."""
    deadline = time.monotonic() + seconds
    env = {**os.environ, "EDGECC_DATA_DIR": str(DATA) if DATA.is_dir() else os.environ.get("EDGECC_DATA_DIR", ""),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1"}
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    queue = pending(results, queue)
    logs = Path(runs) / "device-logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, tuple[int, str, str, float]] = {}
    done: list[tuple[int, str, str]] = []
    while queue or running:
        while len(running) < parallel and len(done) + len(running) < MAX_FILES and deadline - time.monotonic() > min_left:
            # the first cell whose starting model is there: an anneal cell waits for its paper cell to finish here
            ready = [q for q in queue if (init := start_model(results, *q)) is None or init.is_file()]
            if not ready:
                break
            table, recipe, cell = ready[0]
            queue.remove(ready[0])
            cmd = [sys.executable, "-m", "edgecc.cli", "reproduce", "run", "--table", str(table), "--only", cell, "--recipe", recipe,
                   "--device", device, "--threads", threads, "--results-dir", str(results), "--runs-dir", runs, *(extra or [])]
            log = (logs / f"{_name(table, recipe)}.{cell}.log").open("ab")
            running[subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)] = (table, recipe, cell, time.monotonic())
            log.close()
            print(f"== start {_name(table, recipe)} {cell} ({deadline - time.monotonic():.0f} s left)", flush=True)
        if not running:
            if queue:
                print(f"== nothing can start: {', '.join(c for _, _, c in queue)} wait for paper-protocol models not here")
            break
        time.sleep(0.5)
        for proc, (table, recipe, cell, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[proc]
            if proc.returncode == 0:
                done.append((table, recipe, cell))
                acc = _pack(out, results, table, recipe, cell)["accuracy"]
                print(f"== done {_name(table, recipe)} {cell}: {acc:.2f} in {time.monotonic() - t0:.0f} s", flush=True)
            else:
                tail = (logs / f"{_name(table, recipe)}.{cell}.log").read_text(errors="replace")[-1500:]
                print(f"== {cell} failed (exit {proc.returncode}):\n{tail}", flush=True)
        if time.monotonic() > deadline:
            for proc, (table, recipe, cell, t0) in running.items():
                proc.kill()
                proc.wait()
                print(f"== {cell}: deadline after {time.monotonic() - t0:.0f} s; resumes from its last epoch next call", flush=True)
            break
    print(f"finished {len(done)} cell(s); {len(pending(results))} left in the queue")
    return done


def tarball_name(table: int, recipe: str, cell: str) -> str:
    """table2-anneal.mlp_cnn-hs.tgz: a '+' in a file's name keeps it from coming back ("files_left_out")."""
    name = f"{_name(table, recipe)}.{cell.replace('+', '_')}.tgz"
    assert SAFE_NAME.fullmatch(name), name
    return name


def _pack(out: Path, results: Path, table: int, recipe: str, cell: str) -> dict:
    """One tarball per finished cell: its checkpoint and its row (a 2.2 M-parameter K=4 cell is 9 MB); the row."""
    out.mkdir(parents=True, exist_ok=True)
    name = _name(table, recipe)
    doc = json.loads((results / f"{name}.json").read_text())
    row = next(r for r in doc["rows"] if r["cell"] == cell)
    with tarfile.open(out / tarball_name(table, recipe, cell), "w:gz") as tar:
        ckpt = checkpoint_path(results, table, recipe, cell)
        tar.add(ckpt, arcname=ckpt.relative_to(results).as_posix())
        data = json.dumps({"table": table, "recipe": recipe, "protocol": doc.get("protocol"), "row": row}).encode()
        info = tarfile.TarInfo("row.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return row


def restore(results: Path, aside: Path = ASIDE) -> None:
    """Put the checkpoints that `prepare` moved aside back (new ones from the device stay)."""
    if not aside.exists():
        return
    for f in aside.rglob("*.safetensors"):
        dest = results / "checkpoints" / f.relative_to(aside)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.move(str(f), dest)
    shutil.rmtree(aside.parent)
    print(f"checkpoints back in {results / 'checkpoints'}")


def unpack(files_at: Path, results: Path, aside: Path = ASIDE) -> None:
    """Restore what `prepare` moved aside, then merge each tarball's row into results/table*.json and place
    its checkpoint."""
    restore(results, aside)
    for tgz in sorted(files_at.glob("*.tgz")):
        with tarfile.open(tgz) as tar:
            got = json.loads(tar.extractfile("row.json").read())
            ckpt = next(m for m in tar.getmembers() if m.name.startswith("checkpoints/") and m.isfile())
            dest = results / ckpt.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(ckpt).read())
        table, recipe, row = got["table"], got["recipe"], got["row"]
        row["checkpoint"] = str(Path("results") / ckpt.name)
        merge_row(results / f"{_name(table, recipe)}.json", table, recipe, row, got.get("protocol"))
        print(f"{_name(table, recipe)} {row['cell']}: {row['accuracy']:.2f} (paper {row['paper']}) on {row['device']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--from", dest="src", default="/usr/share/datasets/fashion-mnist")
    p = sub.add_parser("run")
    p.add_argument("--seconds", type=float, default=540)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=os.environ.get("OUT", "out/device"))
    p.add_argument("--runs-dir", default="runs/reproduce")
    p.add_argument("--parallel", type=int, default=5, help="cells trained at once")
    p.add_argument("--cells", nargs="*", help="these cells (any of Tables 2 and 3) instead of the queue")
    p.add_argument("--recipe", default="paper", help="the recipe for --cells")
    p.add_argument("--epochs", type=int, help="passed to reproduce (smoke runs)")
    p.add_argument("--limit", type=int, help="passed to reproduce: train on the first LIMIT images (smoke runs)")
    p = sub.add_parser("unpack")
    p.add_argument("files_at")
    sub.add_parser("pending")
    sub.add_parser("restore")
    for p in sub.choices.values():
        p.add_argument("--results-dir", default=str(ROOT / "results"))
    a = ap.parse_args()
    results = Path(a.results_dir)
    if a.cmd == "prepare":
        prepare(a.src, results)
    elif a.cmd == "restore":
        restore(results)
    elif a.cmd == "run":
        extra = [f"--{k}={v}" for k, v in (("epochs", a.epochs), ("limit", a.limit)) if v is not None]
        run(a.seconds, a.device, Path(a.out), results, a.runs_dir, a.parallel, named(a.cells, a.recipe) if a.cells else QUEUE, extra)
    elif a.cmd == "unpack":
        unpack(Path(a.files_at), results)
    else:
        for t, r, c in pending(results):
            print(_name(t, r), c)


if __name__ == "__main__":
    main()
