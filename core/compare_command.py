"""``mentor compare``: leaderboards from MLflow, and a table view that fits the terminal."""

from __future__ import annotations

from .cli_common import EXIT_USAGE, err
from .summary import split_summary, summary_name


def cmd_compare(args) -> int:
    from .tracking.compare import compare, compression_reports, render
    from .tracking.store import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    if args.report == "compression":
        try:
            for heading, table in compression_reports(args.experiment, tracking_uri=uri):
                print(heading)
                print(render(table, args.format) if args.format != "table" else _report_view(table))
        except ValueError as exc:
            err(f"error: {exc}")
            return EXIT_USAGE
        return 0
    metric = args.metric or ("test/accuracy" if args.level == "seeds" else "val/accuracy")
    try:
        df = compare(args.experiment, metric=metric, by=args.by, tracking_uri=uri, level=args.level,
                     study=args.study)
    except ValueError as exc:  # unknown experiment, metric or study: the message has a did-you-mean
        err(f"error: {exc}")
        return EXIT_USAGE
    if args.format != "table":  # csv/json keep every column, `value` named as in the API
        print(render(df, args.format))
        return 0
    return _compare_table(df, args, metric)


def _compare_table(df, args, metric: str) -> int:
    """The board for a terminal: the ranked column named for its metric, the columns that fit."""
    import shutil

    from .tracking.render import fit_columns, render

    summary = split_summary(metric)
    ranked = summary_name(*summary) if summary else summary_name(args.by, metric)
    df = df.drop([c for c in ("parent_run_id", "parent_run_name", "sweep_run_id") if c in df.columns])
    df = df.with_columns(df["run_id"].str.slice(0, 8)) if "run_id" in df.columns else df
    if "value" in df.columns and args.level != "trial":
        df = df.drop([c for c in df.columns if c == ranked]).rename({"value": ranked})
    if args.columns:
        unknown = [c for c in args.columns if c not in df.columns]
        if unknown:
            err(f"error: --columns: no column {', '.join(map(repr, unknown))} (columns: {', '.join(df.columns)})")
            return EXIT_USAGE
        df, hidden = df.select(args.columns), []
    elif args.wide:
        hidden = []
    else:
        df, hidden = fit_columns(df, shutil.get_terminal_size(fallback=(200, 24)).columns, keep=3)
    if args.level == "trial":
        print("trials ranked by their sweep's objective (value)")
    elif args.level == "seeds":
        print(f"{ranked}: mean +- std over seeds, per stage")
    else:
        print(f"ranked by {ranked}" + (" (at the epoch of best validation)" if ranked.startswith("best.") else ""))
    print(render(df, "table"), end="")
    if hidden:
        print(f"(not shown: {', '.join(hidden)}; --wide shows every column, --columns picks them)")
    return 0


def _report_view(table) -> str:
    from .deploy.report import terminal

    return terminal(table) + "\n"
