"""A teacher's forward on the CPU with and without mentor's host-memory setting: time and page faults.

    python experiments/benchmarks/page_faults.py [--keep] [--batch-size 64] [--repeats 5]

resnet32x4 (mentor's CIFAR teacher) in eval mode under ``no_grad`` on one
random batch, forward after forward. Without ``--keep`` glibc returns the
activations' blocks to the system after each forward and the next one
faults them back in page by page; with ``--keep`` the process first calls
``mentor.engine.host_memory.keep_freed_memory`` (what ``engine.keep_host_memory``,
on by default, does for a CPU run). Prints one JSON object: per forward,
milliseconds and minor page faults.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep freed memory (mentor's default on the CPU)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if args.keep:
        from mentor.engine.host_memory import keep_freed_memory

        assert keep_freed_memory(), "this C library has no mallopt"
    from mentor_plugins.models import cifar_resnet

    torch.manual_seed(0)
    teacher = cifar_resnet.resnet32x4(100, 3).eval().requires_grad_(False)
    x = (torch.randint(0, 256, (args.batch_size, 3, 32, 32)).float() / 255 - 0.5) / 0.25
    ms, faults = [], []
    for i in range(2 + args.repeats):  # two warm-up forwards
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        with torch.no_grad():
            teacher(x)
        t1, f1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if i >= 2:
            ms.append(round((t1 - t0) * 1e3, 1))
            faults.append(f1 - f0)
    result = {"keep": args.keep, "batch_size": args.batch_size, "forward_ms": ms, "minor_page_faults": faults,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
