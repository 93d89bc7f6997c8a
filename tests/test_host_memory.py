"""On the CPU, freed blocks are kept for the next step: a run does not fault its memory back in each step."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, torch
mallopt = ctypes.CDLL(None).mallopt
mallopt(-3, 128 * 1024), mallopt(-1, 128 * 1024)  # glibc's own starting thresholds, fixed: the same start for
# both runs (left adaptive, what earlier allocations did decides whether glibc already keeps 8 MB blocks)
from mentor.config.schema import EngineConfig
from mentor.engine.runtime import choose_runtime
choose_runtime(EngineConfig(device="cpu", keep_host_memory=sys.argv[1] == "keep"))  # a CPU run's start
for i in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(2 * 1024 * 1024) for _ in range(16)]  # 16 x 8 MB: a forward's activations
    del blocks
    if i == 5:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_cpu_run_keeps_freed_blocks_instead_of_faulting_them_back_in():
    """`engine.keep_host_memory` on (the default) against off, each at the start of a fresh process."""
    pages = 16 * 8 * 1024 * 1024 // 4096
    assert faults("off") >= pages // 4  # glibc returns the freed heap top: its pages fault in again
    assert faults("keep") < pages // 50  # kept in the heap: the same pages again
