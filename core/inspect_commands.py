"""``mentor schema``, ``mentor plugins`` and ``mentor layers``: what is installed and what a model offers.

Read-only commands that load no data (``layers --experiment`` aside) and
record nothing; the CLI dispatches to them (core/cli.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from .cli_common import EXIT_USAGE, err


def cmd_schema(args) -> int:
    from .config.jsonschema import experiment_schema
    from .plugins import default_plugins

    text = json.dumps(experiment_schema(default_plugins().registry), indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def cmd_plugins(args) -> int:
    from .plugins import default_plugins

    plugins = default_plugins()
    rows = []
    for c in plugins.registry.all():
        schema = c.params.model_json_schema()
        params, required = schema.get("properties", {}), set(schema.get("required", ()))
        rows.append({
            "kind": c.kind, "name": c.name, "package": c.package, "plugin": c.plugin,
            "description": c.description,
            "params": {k: {"type": v.get("type", v.get("anyOf", "")), "default": v.get("default"),
                           "required": k in required, "description": v.get("description")}
                       for k, v in params.items()},
        })
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mentor plugins", show_lines=False)
    for col in ("kind", "name", "package", "params", "description"):
        table.add_column(col, overflow="fold")
    for row in rows:
        params = ", ".join(_param_text(k, v) for k, v in row["params"].items())
        table.add_row(row["kind"], row["name"], row["package"], params, row["description"])
    Console(width=max(120, Console().width)).print(table)
    return 0


def _param_text(name: str, param: dict) -> str:
    """``name (required)``, ``name=default`` or a bare name for an optional value without default."""
    if param["required"]:
        return f"{name} (required)"
    return f"{name}={param['default']!r}" if param["default"] is not None else name


def cmd_layers(args) -> int:
    try:
        return _layers(args)
    except ValueError as exc:  # bad --params / --input / model key: a usage error
        err(f"error: {exc}")
        return EXIT_USAGE


def _layers(args) -> int:
    import torch

    from .features import probe
    from .plugins import default_plugins

    registry = default_plugins().registry
    if args.experiment:
        from .config import load_experiment
        from .pipeline import ExperimentRunner

        experiment = load_experiment(args.experiment, args.set, registry)
        if args.model not in experiment.models:
            from .registry import unknown_name_message

            raise ValueError(unknown_name_message("model", args.model, list(experiment.models)))
        spec = experiment.models[args.model]
        info = ExperimentRunner(experiment).load_data().info
        name, params = spec.name, spec.params
        channels, size, classes = info.in_channels, tuple(info.image_size), info.num_classes
    else:
        name = args.model
        component = registry.get("model", name)
        params = component.params.model_validate(json.loads(args.params)).model_dump()
        channels, *size = (int(v) for v in args.input.lower().split("x"))
        size, classes = tuple(size), args.classes
    model = registry.get("model", name).make_model(classes, channels, size, **params)
    shapes = probe(model, torch.zeros(2, channels, *size))
    if args.json:
        print(json.dumps({node: list(shape[1:]) for node, shape in shapes.items()}, indent=2))
        return 0
    print(f"{name} on {'x'.join(map(str, (channels, *size)))}, {classes} classes: node -> output shape (per sample)")
    for node, shape in shapes.items():
        print(f"  {node:<32} {tuple(shape[1:])}")
    return 0
