"""Time scoring an unlabeled image pool read from disk, and what it costs in memory, as the pool grows.

    python experiments/benchmarks/pool_scale.py [--sizes 100000 1000000] [--root /tmp/pool_scale]
        [--workers 2] [--batch-size 1024] [--k N//100] [--seed 0] [--out /tmp/pool_scale/results.json]

    python experiments/benchmarks/pool_scale.py --sizes 2000 --k 20      # smoke run, under a minute

For each pool size N it first makes (once; a ``DONE`` marker with the count
says it is there) a synthetic folder ``<root>/n<N>/`` of N grayscale 28x28 PNG
files, 1000 per subfolder (``n<N>/0000/000123.png``), deterministic from the
seed: each image is one of 10 blocky class patterns, blended with uniform noise
by a random strength, plus Gaussian noise, so a teacher's confidences spread.
The generation time is reported apart, not as a benchmark figure.

Then a fresh subprocess per size (so its peak RSS is that size's alone) times:

* pool: ``mentor_plugins.pools.image_folder`` (``find_images`` + ``ImagePool``);
* forward: the teacher (``small_cnn(10, 1, channels=[16, 32], pool_size=7)``,
  seeded random init, eval) on one in-memory float batch of ``--batch-size``
  under ``no_grad``, best of 5: the compute ceiling, images/s;
* scoring: ``mentor.pool_scores.score_pool`` (top-10, batch 1024, CPU,
  ``--workers`` DataLoader workers) into a fresh cache folder, images/s
  = N / time, the table's size on disk; then the same call again, which
  finds the table and reuses it (its time is mostly the pool's fingerprint,
  timed alone too);
* selection: ``top_k_per_class`` (k = ``--k``, default N // 100 per class,
  so 10% of N rows over 10 classes), built through the plugin's registration
  hook as experiments/benchmarks/selection.py does, on the lazy table;
* student epoch: the selection as ``pool.files(...)`` (``PoolImages``,
  decoded on demand) in an ``ImageSet``, ``Batches(256, shuffle, host
  placement, --workers workers)``, one SGD step per batch of a
  ``small_cnn(10, 1, channels=[8, 16], pool_size=7)`` student, images/s.

After each phase the child records ``ru_maxrss`` of itself (a high-water mark,
so the phase that raises it is the one that set it) and of its waited-for
children (``RUSAGE_CHILDREN``: the largest child that has exited, not a sum).
The latter is a coarse figure: a forked child starts with its parent's
resident pages counted as its own, so it is about the parent's RSS at the fork
plus what the child added; ``import torch`` alone forks ``ldconfig -p`` from a
~440 MB process. So a sampler thread also reads /proc every 0.25 s and keeps,
per phase, the largest summed RSS, PSS and private (unshared) memory of the
live workers, and the main process's current RSS. The child prints one JSON
line; the parent prints markdown tables and writes every figure, with a
``machine`` section, to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FILES_PER_FOLDER = 1000
CLASSES = 10
SIDE = 28
MEAN, STD = (0.286,), (0.353,)


# --- the synthetic image folder (parent) -----------------------------------------


def dataset_folder(root: Path, n: int) -> Path:
    return root / f"n{n}"


def _digits(n: int) -> int:
    return max(6, len(str(max(n - 1, 0))))


def _prototypes(seed: int) -> np.ndarray:
    """CLASSES blocky patterns in [0, 1], [CLASSES, 28, 28]: 7x7 random cells upscaled 4x."""
    rng = np.random.default_rng([seed, 0x5CA1E])
    cells = rng.random((CLASSES, SIDE // 4, SIDE // 4))
    return np.kron(cells, np.ones((4, 4)))


def _write_folder(job: tuple[str, int, int, int]) -> tuple[int, int, int]:
    """Write subfolder ``f`` (its files ``f*1000 ..``): (files, bytes, bytes on disk)."""
    from PIL import Image

    base, n, f, seed = job
    start, stop = f * FILES_PER_FOLDER, min(n, (f + 1) * FILES_PER_FOLDER)
    folder = Path(base) / f"{f:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    protos = _prototypes(seed)
    rng = np.random.default_rng([seed, f])
    m = stop - start
    cls = rng.integers(0, CLASSES, m)
    strength = rng.random((m, 1, 1))
    x = strength * protos[cls] + (1 - strength) * rng.random((m, SIDE, SIDE))
    x = np.clip(255 * x + rng.normal(0, 12, (m, SIDE, SIDE)), 0, 255).astype(np.uint8)
    digits, size, disk = _digits(n), 0, 0
    for j in range(m):
        path = folder / f"{start + j:0{digits}d}.png"
        Image.fromarray(x[j], mode="L").save(path, format="PNG")
        st = os.stat(path)
        size += st.st_size
        disk += st.st_blocks * 512
    return m, size, disk


def ensure_dataset(root: Path, n: int, seed: int, processes: int = 2) -> dict:
    """The folder of n images (made unless its DONE marker says it holds n): what it holds, how long it took."""
    folder = dataset_folder(root, n)
    marker = folder / "DONE"
    try:
        done = json.loads(marker.read_text())
        if done.get("count") == n and done.get("seed") == seed:
            return {**done, "generated": False}
    except (OSError, ValueError):
        pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    jobs = [(str(folder), n, f, seed) for f in range(-(-n // FILES_PER_FOLDER))]
    t0 = time.perf_counter()
    files = size = disk = 0
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for i, (m, s, d) in enumerate(pool.imap_unordered(_write_folder, jobs, chunksize=4), start=1):
            files, size, disk = files + m, size + s, disk + d
            if i % 50 == 0 or i == len(jobs):
                rate = files / (time.perf_counter() - t0)
                print(f"  generating n{n}: {files:,}/{n:,} files ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    info = {"count": files, "seed": seed, "bytes": size, "disk_bytes": disk, "folders": len(jobs),
            "generate_s": time.perf_counter() - t0, "processes": processes}
    marker.write_text(json.dumps(info))
    return {**info, "generated": True}


# --- the measurement (child) --------------------------------------------------------


def _rss() -> dict:
    """Peak RSS (MB) so far of this process and of its largest waited-for child."""
    return {"main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


class WorkerSampler:
    """Samples this process's live children (DataLoader workers) from /proc every ``every`` s, per phase.

    ``ru_maxrss`` of a forked worker counts the parent's pages it shares (copied page
    tables count as resident), so it says little about what a worker adds; this
    records, summed over the live workers, RSS, PSS and private (unshared) bytes,
    and the main process's current RSS, each phase's maximum.
    """

    def __init__(self, every: float = 0.25):
        import threading

        self.every, self.phase, self.peaks = every, "start", {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _children(self) -> list[int]:
        me, kids = os.getpid(), []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                            kids.append(int(name))
                except (OSError, ValueError, IndexError):
                    pass
        return kids

    @staticmethod
    def _rollup(pid: int | str) -> dict:
        out = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                        out[key] = int(rest.split()[0]) / 1024
        except (OSError, ValueError):
            pass
        return out

    def sample(self) -> None:
        kids = [self._rollup(pid) for pid in self._children()]
        main = self._rollup("self")
        now = {"workers": len(kids), "workers_rss_mb": sum(k.get("Rss", 0) for k in kids),
               "workers_pss_mb": sum(k.get("Pss", 0) for k in kids),
               "workers_private_mb": sum(k.get("Private_Clean", 0) + k.get("Private_Dirty", 0) for k in kids),
               "main_rss_mb": main.get("Rss", 0)}
        peak = self.peaks.setdefault(self.phase, dict.fromkeys(now, 0))
        for key, value in now.items():
            peak[key] = max(peak[key], value)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def enter(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        print(f"  {time.strftime('%H:%M:%S')} {phase}", file=sys.stderr, flush=True)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {phase: {k: round(v, 1) for k, v in peak.items()} for phase, peak in self.peaks.items()}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def measure(cfg: dict) -> dict:
    import polars as pl
    import torch
    import torch.nn.functional as F

    from mentor import Batches, ImageSet
    from mentor.engine.runtime import Runtime
    from mentor.pool_scores import pool_fingerprint, score_pool
    from mentor_plugins import pools, selection
    from mentor_plugins.models.small_cnn import small_cnn

    n, workers, seed = cfg["n"], cfg["workers"], cfg["seed"]
    out: dict = {"n": n, "workers": workers, "torch_threads": torch.get_num_threads(), "rss": {"start": _rss()}}
    sampler = WorkerSampler()

    sampler.enter("pool")
    t = time.perf_counter()
    pool = pools.image_folder(cfg["folder"])
    out["pool_build_s"] = time.perf_counter() - t
    out["files"] = len(pool)
    out["paths_mb"] = pool.paths.nbytes / 2**20
    out["rss"]["pool"] = _rss()

    sampler.enter("forward")
    torch.manual_seed(seed)
    teacher = small_cnn(CLASSES, 1, channels=[16, 32], pool_size=7).eval()

    bs = cfg["batch_size"]
    x = (torch.randint(0, 256, (bs, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(seed)).float()
         .div_(255).sub_(MEAN[0]).div_(STD[0]))
    times = []
    with torch.no_grad():
        teacher(x)  # warm-up
        for _ in range(5):
            t = time.perf_counter()
            teacher(x)
            times.append(time.perf_counter() - t)
    out["forward_s"] = min(times)
    out["forward_images_per_s"] = bs / min(times)
    del x
    out["rss"]["forward"] = _rss()

    cache = Path(cfg["cache"])
    if cache.exists():
        shutil.rmtree(cache)
    sampler.enter("scoring")
    runtime = Runtime(torch.device("cpu"), None, False, False, "none", loader_workers=workers)
    kwargs = dict(channels=1, size=(SIDE, SIDE), top_p=10, batch_size=1024, mean=MEAN, std=STD, runtime=runtime)
    t = time.perf_counter()
    table = score_pool(teacher, pool, cache, **kwargs)
    out["scoring_s"] = time.perf_counter() - t
    out["scoring_images_per_s"] = n / out["scoring_s"]
    out["scoring_reused"] = table.reused
    out["chunks"] = len(table.chunks)
    out["table_mb"] = _folder_bytes(table.folder) / 2**20
    out["table_rows"] = table.scan().select(pl.len()).collect().item()
    out["skipped"] = table.skipped().height
    out["rss"]["scoring"] = _rss()

    sampler.enter("reuse")
    t = time.perf_counter()
    again = score_pool(teacher, pool, cache, **kwargs)
    out["reuse_s"] = time.perf_counter() - t
    out["reuse_reused"] = again.reused
    t = time.perf_counter()
    pool_fingerprint(pool)
    out["fingerprint_s"] = time.perf_counter() - t
    out["rss"]["reuse"] = _rss()

    sampler.enter("selection")
    found: dict = {}
    selection.register_selection_strategies(lambda name, factory, params=None, description=None:
                                            found.__setitem__(name, (factory, params)))
    factory, params = found["top_k_per_class"]
    k = cfg["k"] if cfg["k"] is not None else max(1, n // 100)
    strategy = factory(**params.model_validate({"k": k}).model_dump())
    t = time.perf_counter()
    picked = strategy(table.scan())
    out["selection_s"] = time.perf_counter() - t
    out["k"] = k
    out["selection_rows"] = picked.height
    out["selection_unique_images"] = picked["index"].n_unique()
    out["rss"]["selection"] = _rss()

    sampler.enter("student")
    index = torch.from_numpy(picked["index"].to_numpy().copy())
    targets = torch.from_numpy(picked["label"].to_numpy().astype(np.int64))
    del picked
    torch.manual_seed(seed + 1)
    student = small_cnn(CLASSES, 1, channels=[8, 16], pool_size=7).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    t = time.perf_counter()
    images = pool.files(index, 1, (SIDE, SIDE))
    data = ImageSet(images, torch.arange(len(images)))
    batches = Batches(data, 256, shuffle=True, mean=MEAN, std=STD, device="cpu", placement="host", workers=workers)
    out["student_setup_s"] = time.perf_counter() - t
    seen, loss_sum, steps = 0, 0.0, 0
    t = time.perf_counter()
    for xb, rows in batches.epoch(0):
        loss = F.cross_entropy(student(xb), targets[rows])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(rows)
        loss_sum += loss.item()
        steps += 1
    out["student_epoch_s"] = time.perf_counter() - t
    out["student_images"] = seen
    out["student_images_per_s"] = seen / out["student_epoch_s"]
    out["student_mean_loss"] = loss_sum / max(1, steps)
    sampler.enter("end")
    del batches  # persistent workers exit here, so RUSAGE_CHILDREN counts them
    gc.collect()
    time.sleep(0.2)
    out["rss"]["student"] = _rss()
    out["live"] = sampler.stop()
    out["peak_rss_main_mb"] = out["rss"]["student"]["main_mb"]
    out["peak_rss_workers_mb"] = out["rss"]["student"]["workers_mb"]
    return out


# --- the report (parent) -------------------------------------------------------------


def machine() -> dict:
    """selection.py's machine record (the same benchmark folder), plus torch's thread count."""
    import torch
    from selection import machine as machine_record  # this script's folder is on sys.path when run

    return {**machine_record(), "torch_threads": torch.get_num_threads()}


PHASES = ["start", "pool", "forward", "scoring", "reuse", "selection", "student"]


def markdown(results: list[dict]) -> str:
    head = ["N", "files", "find+pool s", "reuse s (fingerprint s)", "scoring img/s", "forward img/s",
            "scoring/forward", "table MB", "selection s", "selected rows", "student epoch img/s",
            "peak RSS main MB", "peak RSS workers MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [f"{r['n']:,}", f"{r['files']:,}", f"{r['pool_build_s']:.2f}",
                 f"{r['reuse_s']:.2f} ({r['fingerprint_s']:.2f})", f"{r['scoring_images_per_s']:,.0f}",
                 f"{r['forward_images_per_s']:,.0f}", f"{r['scoring_images_per_s'] / r['forward_images_per_s']:.3f}",
                 f"{r['table_mb']:.1f}", f"{r['selection_s']:.3f}", f"{r['selection_rows']:,}",
                 f"{r['student_images_per_s']:,.0f}", f"{r['peak_rss_main_mb']:.0f}", f"{r['peak_rss_workers_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "peak RSS after each phase, MB (main / largest exited worker):", "",
              "| N | " + " | ".join(PHASES) + " |", "|" + "---|" * (len(PHASES) + 1)]
    for r in results:
        cells = [f"{r['rss'][p]['main_mb']:.0f} / {r['rss'][p]['workers_mb']:.0f}" for p in PHASES]
        lines.append(f"| {r['n']:,} | " + " | ".join(cells) + " |")
    lines += ["", "sampled while running (/proc, every 0.25 s), each phase's maximum: main process RSS MB; "
              "live workers: count, summed RSS / PSS / private MB:", "",
              "| N | phase | main RSS | workers | workers RSS | workers PSS | workers private |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        for phase, v in r["live"].items():
            lines.append(f"| {r['n']:,} | {phase} | {v['main_rss_mb']:.0f} | {v['workers']} | "
                         f"{v['workers_rss_mb']:.0f} | {v['workers_pss_mb']:.0f} | {v['workers_private_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--root", type=Path, default=Path("/tmp/pool_scale"))
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for scoring and the student epoch")
    ap.add_argument("--batch-size", type=int, default=1024, help="the pure forward pass's batch")
    ap.add_argument("--k", type=int, default=None, help="top_k_per_class: per class (default N // 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON figures (default <root>/results.json)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one size's measurement, config as JSON
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return {}

    out_file = args.out or args.root / "results.json"
    args.root.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "config": {"sizes": args.sizes, "root": str(args.root), "workers": args.workers,
                                               "batch_size": args.batch_size, "k": args.k, "seed": args.seed},
              "generation": {}, "results": []}
    for n in args.sizes:
        gen = ensure_dataset(args.root, n, args.seed)
        report["generation"][str(n)] = gen
        how = f"generated in {gen['generate_s']:.1f} s" if gen["generated"] else "already there"
        print(f"n={n:,}: {gen['count']:,} files, {gen['bytes'] / 2**20:.0f} MB ({gen['disk_bytes'] / 2**20:.0f} MB "
              f"on disk), {how}", file=sys.stderr, flush=True)
        cfg = {"n": n, "folder": str(dataset_folder(args.root, n)), "cache": str(args.root / f"cache-n{n}"),
               "workers": args.workers, "batch_size": args.batch_size, "k": args.k, "seed": args.seed}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                              stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"measuring n={n} failed (exit {proc.returncode})")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["child_wall_s"] = time.perf_counter() - t
        report["results"].append(result)
        out_file.write_text(json.dumps(report, indent=1))  # after each size: a long run keeps what finished

    m = report["machine"]
    print(f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable, torch threads {m['torch_threads']}, "
          f"polars threads {m['polars_threads']}), torch {m['torch']}, polars {m['polars']}, "
          f"Python {m['python']}, {m['platform']}; {args.workers} DataLoader workers")
    for n, g in report["generation"].items():
        how = f"{g['generate_s']:.1f} s ({g['count'] / g['generate_s']:,.0f} files/s, {g['processes']} processes)"
        print(f"generation n={int(n):,}: {how}{'' if g['generated'] else ', earlier run'}, "
              f"{g['bytes'] / 2**20:.0f} MB / {g['disk_bytes'] / 2**20:.0f} MB on disk")
    print()
    print(markdown(report["results"]))
    print(f"\nfigures: {out_file}")
    return report


if __name__ == "__main__":
    main()
