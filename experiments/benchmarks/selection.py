"""Time the pseudo-label selection strategies on a synthetic teacher's scores.

    python experiments/benchmarks/selection.py [--images 1000000] [--p 10] [--classes 1000]
        [--k 1000] [--repeat 3] [--json]

The scores table follows the pseudo_label contract (index, rank, class, prob;
one row per image and rank). It is built like a real teacher's output: each
image has a true class drawn from mildly imbalanced class frequencies, its
logits are standard normal noise plus a margin on the true class drawn
uniformly from [0, 10) (so confidences spread from near-uniform to near-one),
then softmax and top-P, in chunks with torch, seeded.

Each strategy is built through its registered params model and timed on that
table (best of --repeat; the build time is reported apart). With --json the
figures go to stdout as JSON and the human table to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import polars as pl
import torch

from mentor_plugins import selection


def synthetic_scores(images: int, p: int, classes: int, seed: int = 0) -> pl.DataFrame:
    """A teacher's top-p scores for ``images`` images over ``classes`` classes (see the module doc)."""
    if not 1 <= p <= classes:
        raise ValueError(f"need 1 <= p <= classes, got p={p}, classes={classes}")
    g = torch.Generator().manual_seed(seed)
    weights = torch.exp(0.5 * torch.randn(classes, generator=g))  # class imbalance, lognormal
    chunk = max(1, (1 << 25) // classes)  # about 128 MiB of logits at a time
    probs, cls = [], []
    for start in range(0, images, chunk):
        n = min(chunk, images - start)
        true = torch.multinomial(weights, n, replacement=True, generator=g)
        logits = torch.randn(n, classes, generator=g)
        logits[torch.arange(n), true] += 10.0 * torch.rand(n, generator=g)
        top = torch.topk(torch.softmax(logits, dim=1), p, dim=1)  # sorted: rank 0 first
        probs.append(top.values.reshape(-1).numpy())
        cls.append(top.indices.to(torch.int32).reshape(-1).numpy())
    return pl.DataFrame(
        {
            "index": np.repeat(np.arange(images, dtype=np.int64), p),
            "rank": np.tile(np.arange(p, dtype=np.int8), images),
            "class": np.concatenate(cls) if cls else np.empty(0, np.int32),
            "prob": np.concatenate(probs) if probs else np.empty(0, np.float32),
        },
        schema=selection.SCORES_SCHEMA,
    )


def registered_strategies() -> dict[str, tuple]:
    """name -> (factory, params model), from the plugin's own registration hook."""
    found: dict[str, tuple] = {}

    def register(name, factory, params=None, description=None):
        found[name] = (factory, params)

    selection.register_selection_strategies(register)
    return found


def machine() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "polars_threads": pl.thread_pool_size(),
        "polars": pl.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--p", type=int, default=10, help="classes kept per image (top-P)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--k", type=int, default=1000, help="top_k_per_class: examples per class")
    ap.add_argument("--tau", type=float, default=0.5, help="threshold: minimum probability")
    ap.add_argument("--per-class", type=int, default=None, help="balanced: target per class (default images/classes)")
    ap.add_argument("--min-confidence", type=float, default=0.3, help="balanced: confidence filter")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="JSON to stdout, the table to stderr")
    args = ap.parse_args(argv)
    per_class = args.per_class or max(1, args.images // args.classes)

    t0 = time.perf_counter()
    scores = synthetic_scores(args.images, args.p, args.classes, args.seed)
    build_s = time.perf_counter() - t0

    cases = [
        ("top_k_per_class", {"k": args.k}),
        ("top_k_per_class", {"k": args.k, "p": max(1, args.p // 2)}),
        ("threshold", {"tau": args.tau}),
        ("threshold", {"tau": args.tau / 5, "top_only": False}),
        ("balanced", {"per_class": per_class, "min_confidence": args.min_confidence}),
        ("all", {}),
    ]
    strategies = registered_strategies()
    results = []
    for name, params in cases:
        factory, model = strategies[name]
        strategy = factory(**model.model_validate(params).model_dump())
        times = []
        for _ in range(max(1, args.repeat)):
            t = time.perf_counter()
            out = strategy(scores)
            times.append(time.perf_counter() - t)
        results.append({
            "strategy": name, "params": params, "rows_out": out.height,
            "best_s": min(times), "median_s": statistics.median(times), "times_s": times,
        })

    report = {
        "machine": machine(),
        "config": {"images": args.images, "p": args.p, "classes": args.classes, "rows_in": scores.height,
                   "repeat": args.repeat, "seed": args.seed},
        "build_s": build_s,
        "results": results,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }

    text = sys.stderr if args.json else sys.stdout
    m = report["machine"]
    print(f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable, polars threads {m['polars_threads']}), "
          f"polars {m['polars']}, torch {m['torch']}, Python {m['python']}, {m['platform']}", file=text)
    print(f"scores: {args.images:,} images x top-{args.p} of {args.classes:,} classes = {scores.height:,} rows, "
          f"built in {build_s:.2f} s", file=text)
    print(f"{'strategy':<16} {'params':<40} {'rows out':>11} {'best s':>8} {'median s':>9}", file=text)
    for r in results:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['strategy']:<16} {params:<40} {r['rows_out']:>11,} {r['best_s']:>8.3f} {r['median_s']:>9.3f}",
              file=text)
    print(f"peak RSS {report['peak_rss_mib']:.0f} MiB", file=text)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    return report


if __name__ == "__main__":
    main()
