"""The compression report: one row per model and format, every ratio against the teacher.

Rows come from ``mentor.shipping`` (which measures them); here they become a
polars table, a markdown page (the table and the machine it was measured on)
and the accuracy-vs-latency figure with its Pareto front: the models no other
model beats on both accuracy and latency.
"""

from __future__ import annotations

import polars as pl

COLUMNS = {  # column -> how the markdown shows it
    "model": "{}", "role": "{}", "format": "{}", "parameters": "{:,.0f}", "size_mb": "{:.3f}",
    "mflops": "{:.4g}", "latency_p50_ms": "{:.3f}", "latency_p95_ms": "{:.3f}", "throughput_ips": "{:,.0f}",
    "test_accuracy": "{:.4f}", "params_vs_teacher": "{:.3f}", "size_vs_teacher": "{:.3f}",
    "flops_vs_teacher": "{:.3f}", "speedup_vs_teacher": "{:.2f}", "throughput_vs_teacher": "{:.2f}",
    "accuracy_vs_teacher": "{:+.4f}", "note": "{}",
}
RATIOS = {  # ratio column -> (measured column, teacher over model?)
    "params_vs_teacher": ("parameters", False), "size_vs_teacher": ("size_mb", False),
    "flops_vs_teacher": ("mflops", False), "speedup_vs_teacher": ("latency_p50_ms", True),
    "throughput_vs_teacher": ("throughput_ips", False),
}


def with_ratios(rows: list[dict], reference: str | None) -> pl.DataFrame:
    """The table of ``rows``, each compared with ``reference``'s row of the same format (its PyTorch row
    when the reference has none in that format): sizes and FLOPs as a fraction of the teacher's, speed as
    a multiple of it, accuracy as a difference."""
    teacher = {row["format"]: row for row in rows if row["model"] == reference}
    out = []
    for row in rows:
        base = teacher.get(row["format"]) or teacher.get("pytorch fp32")
        row = dict(row)
        for column, (measured, inverse) in RATIOS.items():
            a, b = row.get(measured), base.get(measured) if base else None
            row[column] = None if a is None or b is None or not a or not b else (b / a if inverse else a / b)
        a, b = row.get("test_accuracy"), base.get("test_accuracy") if base else None
        row["accuracy_vs_teacher"] = None if a is None or b is None else a - b
        row.setdefault("note", "")
        out.append(row)
    schema = {c: (pl.String if c in ("model", "role", "format", "note") else pl.Float64) for c in COLUMNS}
    return pl.DataFrame([{c: r.get(c) for c in COLUMNS} for r in out], schema=schema)


def markdown(table: pl.DataFrame, machine: str, settings: str) -> str:
    """The table as a markdown page with the machine and measurement settings on top."""
    def cell(column, value):
        return "" if value is None else COLUMNS[column].format(value)

    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(c, v) for c, v in row.items()) + " |" for row in table.iter_rows(named=True)]
    return "\n".join([f"# Compression report\n\nMeasured on {machine}; {settings}.\n", header, rule, *body, ""])


def terminal(table: pl.DataFrame) -> str:
    """A narrow view for the terminal: what a person compares first."""
    keep = ["model", "format", "parameters", "size_mb", "mflops", "latency_p50_ms", "throughput_ips",
            "test_accuracy", "speedup_vs_teacher", "accuracy_vs_teacher"]
    short = table.select([c for c in keep if c in table.columns])
    lines = markdown(short, "", "").splitlines()[4:]
    return "\n".join(lines)


def pareto_front(table: pl.DataFrame) -> list[int]:
    """Row numbers of the models no other row beats on both latency (lower) and accuracy (higher)."""
    points = [(r["latency_p50_ms"], r["test_accuracy"], i) for i, r in enumerate(table.iter_rows(named=True))
              if r["latency_p50_ms"] is not None and r["test_accuracy"] is not None]
    front, best = [], float("-inf")
    for _latency, accuracy, i in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append(i)
            best = accuracy
    return front


def pareto_figure(table: pl.DataFrame, machine: str):
    """Test accuracy against batch-1 latency, one point per model and format, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = list(table.iter_rows(named=True))
    markers = {"pytorch fp32": "o", "onnx fp32": "s", "onnx int8": "^"}
    for row in rows:
        if row["latency_p50_ms"] is None or row["test_accuracy"] is None:
            continue
        ax.scatter(row["latency_p50_ms"], row["test_accuracy"], marker=markers.get(row["format"], "o"),
                   color="tab:red" if row["role"] == "teacher" else "tab:blue", s=40)
        ax.annotate(f"{row['model']} ({row['format']})", (row["latency_p50_ms"], row["test_accuracy"]),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = [rows[i] for i in pareto_front(table)]
    if len(front) > 1:
        ax.plot([r["latency_p50_ms"] for r in front], [r["test_accuracy"] for r in front], "--", color="gray",
                lw=1, label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("CPU latency at batch 1, p50 (ms)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs latency\n{machine}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
