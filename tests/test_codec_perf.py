"""Frame memory and the bench's codec section: the allocator setting takes (where the C library is glibc)
and is idempotent; the section receives real frames over loopback in a fresh process and reports them.
No assertions on timing values."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from edgecc import process

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_keep_frame_memory_takes_on_glibc_and_is_idempotent():
    first = process.keep_frame_memory()
    assert first == GLIBC
    assert process.keep_frame_memory() == first  # a second call (every Master does one) changes nothing


@pytest.mark.skipif(not GLIBC, reason="the allocator setting is glibc's (mallopt); elsewhere it is a no-op")
def test_codec_section_reads_real_frames_in_a_fresh_process():
    out = subprocess.run([sys.executable, "-m", "edgecc.bench.codec", json.dumps({"keep": True, "budget": 0})],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kept"] is True
    assert [r["groups"] for r in got["rows"]] == [1, 64, 256]
    for r in got["rows"]:
        assert r["frames"] >= 199 and r["frame_bytes"] > r["groups"] * 784 * 4  # f4 payload plus the frame's header
        assert r["cpu_us_per_frame"] >= 0 and r["socket_floor_us_per_frame"] >= 0
