"""Fuzzing and chaos testing against real worker processes and a real master (test support; the
product does not import it).

* `fuzz_worker` (worker_fuzzer, with the cases in preauth and session_frames): one `edgecc worker`
  process, frames thrown over many connections, every reply checked against docs/protocol.md.
* `fuzz_master` (master_fuzzer): a real Master with two honest workers and one in-process fake
  worker answering with invalid results and frames; every request must decode correctly.
* `soak` (soak): workers killed, restarted, paused and resumed under a closed loop of requests.
* Shared parts: procs (worker processes, /proc), payloads (frames that break one rule each),
  reference (the in-process logits decoded requests must equal), peer
  (a raw client connection and the findings it records).

benchmarks/fuzz.py and benchmarks/soak.py run the long versions and write results/;
tests/test_fuzz_live.py runs short ones.
"""

from .master_fuzzer import fuzz_master
from .soak import soak
from .worker_fuzzer import fuzz_worker

__all__ = ["fuzz_master", "fuzz_worker", "soak"]
