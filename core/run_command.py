"""``mentor run``: one experiment, or one per seed (``--seeds``), and what it prints at the end."""

from __future__ import annotations

from .cli_common import EXIT_INTERRUPTED, EXIT_USAGE, err, load
from .hookspecs import hookimpl


class Banner:
    """Says at the start what runs where: the experiment, its run id, the store, the stages and their kinds."""

    def __init__(self, runner):
        self.runner = runner

    @hookimpl
    def on_experiment_start(self, experiment, run_id):
        from .engine.distributed import is_main

        if not is_main():
            return
        stages = " -> ".join(f"{s.name} ({s.kind})" for s in experiment.stages)
        print(f"mentor: experiment '{experiment.name}', run {run_id}\n"
              f"  store:  {self.runner.tracker.uri}\n  data:   {self.runner.data_line()}\n  stages: {stages}",
              flush=True)


def cmd_run(args) -> int:
    from .engine.distributed import is_main
    from .pipeline import ExperimentRunner

    experiment, plugins = load(args.file, args.set)
    resume = args.resume is not None
    run_id = args.resume if args.resume not in (None, "latest") else None
    seeds = args.seeds or experiment.seeds
    if seeds:
        return _run_seeds(args, experiment, plugins, seeds, resume)
    runner = ExperimentRunner(experiment, plugins)
    banner = Banner(runner)
    plugins.manager.register(banner)  # for this run only: the plugin manager may serve later runs
    try:
        results = runner.run(resume=resume, resume_run_id=run_id, resume_changed=args.resume_changed)
    except KeyboardInterrupt:
        if is_main():  # under torchrun, rank 0 speaks for all
            err(f"\ninterrupted. Continue where it stopped with: mentor run {args.file} --resume")
        return EXIT_INTERRUPTED
    finally:
        plugins.manager.unregister(banner)
    if not is_main():
        return 0
    for name, result in results.items():
        best = result.metrics.get("best.test.accuracy")
        last = result.metrics.get("last.test.accuracy")
        if best is not None and "best.epoch" not in result.metrics:  # a model used as it is (evaluate)
            print(f"{name:>20}: test accuracy {last:.4f} (evaluated as it is, nothing trained)")
        elif best is not None:
            print(f"{name:>20}: test accuracy {last:.4f} (last), {best:.4f} (at best val epoch)")
    if getattr(runner, "report", None) is not None:
        from .deploy.measure import machine
        from .deploy.report import terminal

        print(f"\ncompression report, measured on {machine()} (report/compression.md of the run):")
        print(terminal(runner.report))
    if getattr(runner, "registered", None):
        print(f"registered: {runner.registered} (a teacher elsewhere with `uri: {runner.registered}`)")
    name = experiment.tracking.experiment or experiment.name
    print(f"run {runner.parent} finished. Open it with: mentor ui --experiment {name}; "
          f"rank its stages with: mentor compare {name}")
    return 0


def _run_seeds(args, experiment, plugins, seeds: list[int], resume: bool) -> int:
    from .seeds import SeedsError, run_seeds

    try:
        outcome = run_seeds(experiment, plugins, seeds, resume=resume)
    except SeedsError as exc:
        err(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        err(f"\ninterrupted. Continue where it stopped with: mentor run {args.file} --resume"
             + (f" --seeds {','.join(map(str, seeds))}" if args.seeds else ""))
        return EXIT_INTERRUPTED
    rows = outcome.summary.filter(outcome.summary["metric"] == "best.test.accuracy")
    print(f"\ntest accuracy at the best val epoch over seeds {', '.join(map(str, seeds))} (mean +- std):")
    for row in rows.iter_rows(named=True):
        values = ", ".join(f"{v:.4f}" for v in row["values"])
        print(f"{row['stage']:>20}: {row['mean']:.4f} +- {row['std']:.4f}  ({values})")
    name = experiment.tracking.experiment or experiment.name
    print(f"multi-seed run {outcome.run_id}; compare with: mentor compare {name} --level seeds")
    return 0
