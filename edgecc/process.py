"""Process-wide settings every edgecc process (worker, master, serve) runs under: the event loop
(`run`: uvloop where installed) and the allocator's handling of frame-sized blocks.
numpy's BLAS threads are set apart, in blas.py."""

from __future__ import annotations

import asyncio
import ctypes
import platform
from typing import Any

# glibc's allocator for frame-sized blocks (see keep_frame_memory): blocks up to FRAME_HEAP_MAX come
# from the heap, and up to HEAP_KEEP bytes of freed heap stay with the process.
FRAME_HEAP_MAX = 4 << 20
HEAP_KEEP = 16 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_kept: bool | None = None


def keep_frame_memory() -> bool:
    """Let the process reuse the memory of freed frames instead of handing it back to the kernel.

    Every message allocates and frees blocks of its frame's size several times (the socket read,
    msgpack's bytes, a request's encoded arrays: ~200 kB per worker for a 64-group request). With
    glibc's defaults a freed block that size is unmapped or trimmed off the heap, and the next one
    page-faults its memory in again; `edgecc bench` (section "codec") measures what that costs per
    frame with and without this setting. Blocks up to FRAME_HEAP_MAX now come from the heap, and up
    to HEAP_KEEP bytes of freed heap are kept for the next frame (larger blocks, such as a
    configure's arrays, still go straight back). Process-wide and idempotent, like the BLAS thread
    limit; False where the C library is not glibc (nothing changes there)."""
    global _kept
    if _kept is None:
        _kept = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(None)
                _kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, FRAME_HEAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP))
            except (OSError, AttributeError):
                pass
    return _kept




def run(coro) -> Any:
    """Run a coroutine on uvloop where installed, plain asyncio otherwise (same code path). Every
    edgecc process (worker, master, serve) runs through here, so it also keeps frame memory."""
    keep_frame_memory()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    # not uvloop.run: it appeared in 0.18, and Debian 12 (Raspberry Pi OS) ships 0.17
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
