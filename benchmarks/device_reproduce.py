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

`run` walks QUEUE in order, skipping runs that already have a row, and runs `edgecc reproduce run --device cuda`
for --parallel cells at a time until the deadline (reproduce resumes per epoch, so a cell cut off goes on in
the next call while the machine stays warm; rows merge under a lock). Each finished cell comes back as one
tarball with its checkpoint and its row; `unpack` merges the rows into results/table*.json. Anneal cells
wait in the queue until their paper-protocol model is there (trained earlier in the call, or carried by
`prepare`). Without a GPU, `run --device cpu --parallel 2 --seconds S` walks the same queue on this
machine, each cell resuming per epoch. Rows trained here record `"device": "cuda"` (docs/results.md).

A run with a seed other than 0 is benchmarks/seeds.py's: its row and model go to results/seeds/CELL/seedN/,
where `edgecc reproduce render` counts them in the seeds table; `run --cells CELL --seeds 1 2` trains those.
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
from pathlib import Path, PurePosixPath
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from edgecc.reproduce import (TABLES, checkpoint_path, merge_row, read_rows, results_name as _name,  # noqa: E402
                              seed_results_dir, start_model)


class Job(NamedTuple):
    """One training run: a cell of a table by a recipe, from a seed (0: the row of the table itself)."""
    table: int | str
    recipe: str
    cell: str
    seed: int = 0

    def results(self, results: Path) -> Path:
        return seed_results_dir(results, self.cell, self.seed)

    def runs(self, runs: str | Path) -> Path:
        return Path(runs) if self.seed == 0 else Path(runs) / "seeds" / self.cell / f"seed{self.seed}"

    def start(self, results: Path) -> Path | None:
        """The model this run continues (anneal: the same seed's paper-protocol model), None where it starts fresh."""
        return start_model(self.results(results), self.table, self.recipe, self.cell, self.seed)

    def rows_file(self, results: Path) -> Path:
        return self.results(results) / f"{_name(self.table, self.recipe)}.json"

    def model_file(self, results: Path) -> PurePosixPath:
        """Where the run's model lives, relative to `results` (its path inside a tarball, too)."""
        return PurePosixPath(checkpoint_path(self.results(results), self.table, self.recipe, self.cell).relative_to(results).as_posix())

    def label(self) -> str:
        return f"{_name(self.table, self.recipe)} {self.cell}" + (f" seed {self.seed}" if self.seed else "")


DATA = ROOT / ".device-data" / "fashion-mnist"
ASIDE = ROOT / ".device-aside" / "checkpoints"
# (table, recipe, cell): the paper-protocol cells first, then the improved-recipe column the issue asks for
QUEUE = [Job(2, "paper", c) for c in ("cnn+mlp-hb", "mlp+cnn-hb", "baseline-cnn", "mlp+cnn-hs", "cnn+mlp-hs", "cnn+cnn-hs")]
QUEUE += [Job(3, "paper", c) for c in ("k2-r3-hb-g2p1", "k2-r3-hs-g2p1", "k2-r3-hs-g1p2", "k4-r3-hb-g2p1", "k4-r3-hs-g2p1",
                                    "k4-r3-hs-g1p2", "k4-r5-hb-g4p1", "k4-r5-hs-g4p1", "k4-r5-hs-g2p2", "k4-r5-hs-g1p4")]
# the anneal recipe continues a cell's paper-protocol model: it waits for that cell (trained here, or carried)
QUEUE += [Job(3, "anneal", c) for c in ("k4-r5-hs-g4p1", "k4-r5-hb-g4p1", "k4-r5-hs-g2p2", "k4-r5-hs-g1p4", "k2-r3-hs-g2p1",
                                     "k2-r3-hs-g1p2", "k4-r3-hs-g2p1", "k2-r3-hb-g2p1", "k4-r3-hs-g1p2", "k4-r3-hb-g2p1")]
QUEUE += [Job(2, "anneal", c) for c in ("mlp+cnn-hs", "cnn+cnn-hb")]
# AICC at ApproxIFER's K=8 operating point (table k8): the He-init cells first (beyond the paper: they leave chance
# within ~40 steps, the default init is still at chance after 150, docs/k8.md), the cheaper low-R cell first
QUEUE += [Job("k8", "paper", c) for c in ("k8-r4-hb-g3p1-he", "k8-r8-hb-g7p1-he", "k8-r4-hb-g3p1", "k8-r8-hb-g7p1")]
# the best K=4 R=5 cell from the He init (beyond the paper; 60.01% after one epoch where the default init has 48.85)
QUEUE += [Job(3, "paper", "k4-r5-hs-g1p4-he"), Job(3, "anneal", "k4-r5-hs-g1p4-he")]
# the anneal recipe at the K=8 cells' own peak lr (K8_LR): Table 3's anneal added 2.9-6.2 points to every cell
QUEUE += [Job("k8", "anneal", c) for c in ("k8-r8-hb-g7p1-he", "k8-r4-hb-g3p1-he")]
# seeds 1 and 2 of the headline cells, for their 3-seed means (seed 0 is the table's row): the shipped default's
# cell, the K=8 He-init cells, the best K=4 R=5 cell annealed from either init (each anneal waits for its seed's
# paper-protocol model)
QUEUE += [Job(2, "paper", "cnn+cnn-hb", s) for s in (1, 2)]
QUEUE += [Job("k8", "paper", c, s) for c in ("k8-r8-hb-g7p1-he", "k8-r4-hb-g3p1-he") for s in (1, 2)]
QUEUE += [Job(3, r, c, s) for c in ("k4-r5-hs-g1p4-he", "k4-r5-hs-g1p4") for s in (1, 2) for r in ("paper", "anneal")]
# the best K=4 R=5 cell's annealed model widened to 160 channels, per seed (beyond the paper; each waits for its
# seed's annealed narrow model)
QUEUE += [Job(3, "anneal", "k4-r5-hs-g1p4-he-w160", s) for s in (0, 1, 2)]
# ... and given 4 maps per encoded input instead (beyond the paper; the same wait)
QUEUE += [Job(3, "anneal", "k4-r5-hs-g1p4-he-m4", s) for s in (0, 1, 2)]
# the best K=4 R=5 cell with its own Chebyshev points in [−1, 1] (beyond the paper), by both recipes, per seed
QUEUE += [Job(3, r, "k4-r5-hs-g1p4-he-cheb", s) for s in (0, 1, 2) for r in ("paper", "anneal")]
QUEUE += [Job("k8", r, "k8-r8-hb-g7p1-he-cheb", s) for s in (0, 1, 2) for r in ("paper", "anneal")]
MAX_FILES = 7  # tarballs per call: a call brings back 8 files from $OUT, one is kept for the call's log
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")  # the only names a file from $OUT comes back under


def pending(results: Path, queue: list[Job] = QUEUE) -> list[Job]:
    """The runs of `queue` with no row yet (tuples are read as Jobs)."""
    jobs = [Job(*q) for q in queue]
    return [j for j in jobs if j.cell not in (read_rows(j.results(results), j.table, j.recipe) or {})]


def named(cells: list[str], recipe: str = "paper", seeds: list[int] = (0,)) -> list[Job]:
    """The runs of cells given by name, each seed in turn, in the order given."""
    where = {c.name: (t, c.kind) for t, cs in TABLES.items() for c in cs}
    unknown = [c for c in cells if c not in where]
    if unknown:
        raise SystemExit(f"unknown cell(s) {unknown}; known: {', '.join(where)}")
    # the learned code trains on the table's frozen MLP; benchmarks/seeds.py lends each seed's folder a copy of it
    if any(s != 0 for s in seeds) and (lc := [c for c in cells if where[c][1] == "learned-code"]):
        raise SystemExit(f"{lc}: train the learned code's other seeds with benchmarks/seeds.py")
    return [Job(where[c][0], recipe, c, s) for c in cells for s in seeds]


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
    for job in pending(results):
        init = job.start(results)  # a seed's own models stay in results/seeds/ and travel with the tree
        kept = init and init.is_relative_to(results / "checkpoints") and aside / init.relative_to(results / "checkpoints")
        if kept and kept.is_file() and not init.exists():
            init.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept, init)
            print(f"carrying {init} ({init.stat().st_size / 2**20:.1f} MiB) for {job.label()}")
    print(f"{data}: {sorted(p.name for p in data.iterdir())}; carry '.device-data' (.gitignore names it)")


def run(seconds: float, device: str, out: Path, results: Path, runs: str = "runs/reproduce", parallel: int = 5,
        queue: list[Job] = QUEUE, extra: list[str] | None = None, min_left: float = 30) -> list[Job]:
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
    running: dict[subprocess.Popen, tuple[Job, float]] = {}
    done: list[Job] = []
    while queue or running:
        while len(running) < parallel and len(done) + len(running) < MAX_FILES and deadline - time.monotonic() > min_left:
            # the first cell whose starting model is there: an anneal cell waits for its paper cell to finish here
            ready = [j for j in queue if (init := j.start(results)) is None or init.is_file()]
            if not ready:
                break
            job = ready[0]
            queue.remove(job)
            cmd = [sys.executable, "-m", "edgecc.cli", "reproduce", "run", "--table", str(job.table), "--only", job.cell,
                   "--recipe", job.recipe, "--seed", str(job.seed), "--device", device, "--threads", threads,
                   "--results-dir", str(job.results(results)), "--runs-dir", str(job.runs(runs)), *(extra or [])]
            log = (logs / _log_name(job)).open("ab")
            running[subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)] = (job, time.monotonic())
            log.close()
            print(f"== start {job.label()} ({deadline - time.monotonic():.0f} s left)", flush=True)
        if not running:
            if queue:
                print(f"== nothing can start: {', '.join(j.label() for j in queue)} wait for paper-protocol models not here")
            break
        time.sleep(0.5)
        for proc, (job, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[proc]
            if proc.returncode == 0:
                done.append(job)
                acc = _pack(out, results, job)["accuracy"]
                print(f"== done {job.label()}: {acc:.2f} in {time.monotonic() - t0:.0f} s", flush=True)
            else:
                tail = (logs / _log_name(job)).read_text(errors="replace")[-1500:]
                print(f"== {job.label()} failed (exit {proc.returncode}):\n{tail}", flush=True)
        if time.monotonic() > deadline:
            for proc, (job, t0) in running.items():
                proc.kill()
                proc.wait()
                print(f"== {job.label()}: deadline after {time.monotonic() - t0:.0f} s; resumes from its last epoch next call", flush=True)
            break
    print(f"finished {len(done)} cell(s); {len(pending(results))} left in the queue")
    return done


def _stem(job: Job) -> str:
    return f"{_name(job.table, job.recipe)}.{job.cell.replace('+', '_')}" + (f".seed{job.seed}" if job.seed else "")


def _log_name(job: Job) -> str:
    return f"{_stem(job)}.log"


def tarball_name(job: Job) -> str:
    """table2-anneal.mlp_cnn-hs.tgz, table-k8.k8-r8-hb-g7p1-he.seed1.tgz: a '+' in a file's name keeps it from
    coming back ("files_left_out")."""
    name = f"{_stem(job)}.tgz"
    assert SAFE_NAME.fullmatch(name), name
    return name


def _pack(out: Path, results: Path, job: Job) -> dict:
    """One tarball per finished run: its checkpoint (under its path in results/) and its row (a 2.2 M-parameter
    K=4 cell is 9 MB); the row."""
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads(job.rows_file(results).read_text())
    row = next(r for r in doc["rows"] if r["cell"] == job.cell)
    with tarfile.open(out / tarball_name(job), "w:gz") as tar:
        arc = job.model_file(results).as_posix()
        tar.add(results / arc, arcname=arc)
        data = json.dumps({"table": job.table, "recipe": job.recipe, "seed": job.seed, "checkpoint": arc,
                           "protocol": doc.get("protocol"), "row": row}).encode()
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
            job, row = Job(got["table"], got["recipe"], got["row"]["cell"], got.get("seed", 0)), got["row"]
            arc = PurePosixPath(got["checkpoint"])
            # the one path a tarball may write to: this run's own model file, inside results/
            if arc != job.model_file(results):
                raise SystemExit(f"{tgz.name}: its model is at {arc}, not where {job.label()} keeps it")
            dest = results / arc
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(tar.extractfile(arc.as_posix()).read())
        row["checkpoint"] = str(Path("results") / arc)
        merge_row(job.rows_file(results), job.table, job.recipe, row, got.get("protocol"))
        print(f"{job.label()}: {row['accuracy']:.2f} (paper {row['paper']}) on {row['device']}")


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
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="the seeds for --cells (0: the table's own row)")
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
        run(a.seconds, a.device, Path(a.out), results, a.runs_dir, a.parallel, named(a.cells, a.recipe, a.seeds) if a.cells else QUEUE, extra)
    elif a.cmd == "unpack":
        unpack(Path(a.files_at), results)
    else:
        for job in pending(results):
            print(job.label())


if __name__ == "__main__":
    main()
