"""numpy's BLAS on one thread in the master and the workers.

Their matrix products are small (a worker's is (B, 784) x (784, 10)), and OpenBLAS hands anything
above ~100 rows to its thread pool. Waking that pool costs far more than the product: measured on a
2-core VM, a 256-group worker GEMM took 7.8-20 ms with OpenBLAS's 2 threads and 0.46 ms with one —
the "8 ms mode" a 256-group round trip showed. The processes get their parallelism elsewhere
(requests in flight, the master's encode threads), so BLAS threads only compete with them.
"""

from __future__ import annotations

import logging

log = logging.getLogger("edgecc")


def single_threaded_blas() -> bool:
    """Limit numpy's BLAS to one thread for the whole process; False if threadpoolctl is missing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct, only slower for large batches
        log.warning("threadpoolctl is not installed: numpy's BLAS keeps its thread pool (slower large requests)")
        return False
    threadpool_limits(1, user_api="blas")
    return True
