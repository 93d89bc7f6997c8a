"""Shipping what a run produced: a stage's ``export:``, the run's compression report and
``tracking.register``. The pipeline calls these; ``mentor export`` calls ``export_stage`` after the fact.

Why here, between the pipeline and the stage context: they need the models a
run's stages kept (``StageContext`` builds them) and the run's data, and they
record into the stage's and the parent's MLflow runs.
"""

from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
from torch import nn

from .config.loader import references, stage_model_key, trained_model_key
from .context import RunState, StageContext, StageResult
from .deploy import measure
from .deploy import report as report_table
from .deploy.mlflow_models import RegistryConflict, check_registrable, log_onnx_model, register
from .deploy.onnx_export import ExportError, OnnxModel, check_onnx, export_onnx, onnx_accuracy
from .deploy.quantize import quantize_int8
from .engine import checkpoint, distributed
from .model_input import ModelBatches, ModelInput, bare
from .pool_scores import weights_sha256
from .tracking.tracker import NullTracker

__all__ = ["ExportError", "RegistryConflict", "check_register", "compression_report", "export_stage",
           "kept_model", "register_stage", "register_student"]


def kept_model(ctx: StageContext, result: StageResult) -> nn.Module:
    """The model a finished stage kept (its weights file), or the one it used as is (an ``evaluate``
    of a ``models`` key), on the CPU in eval mode, as it ships: without its input pipeline in front
    (``shipped_input`` is that pipeline)."""
    if result.model_key is None:
        raise ValueError(f"stage '{result.stage}' has no model")
    model = ctx.build_model(result.model_key)
    if result.weights:
        checkpoint.load_weights(model, checkpoint.load(result.weights), f"weights of stage '{result.stage}'")
    return bare(model).float().cpu().eval()


def shipped_input(ctx: StageContext, key: str) -> ModelInput:
    """What a shipped ``models[key]`` takes: its own pipeline (the data's, unless it has another)."""
    return ctx.model_input(key)


def architecture(experiment, key: str, model: nn.Module, info, pipeline: ModelInput | None = None) -> str:
    """What must match for two models to share a registered name: component, params (not weights),
    classes and channels (its own pipeline's, where it has one)."""
    spec = experiment.models[key]
    params = {k: v for k, v in spec.params.items() if k != "weights"}
    model = bare(model)
    name = spec.name or f"module:{type(model).__module__}.{type(model).__qualname__}"
    pipeline = pipeline or ModelInput.of_data(info)
    return f"{name} {json.dumps(params, sort_keys=True)} ({pipeline.num_classes(info)} classes, " \
        f"{pipeline.channels} channels)"


def _cpu_batches(ctx: StageContext, data, pipeline: ModelInput, batch_size: int = 256):
    """Batches as a shipped model takes them (its own input, labels in its class order)."""
    return ModelBatches(data, batch_size, pipeline, ctx.info, shuffle=False)


def _take(data, n: int):
    return data if len(data) <= n else data.subset(torch.arange(n))


# -- a stage's export -------------------------------------------------------------------
def export_stage(ctx: StageContext, result: StageResult) -> dict:
    """``export:`` of ``ctx.stage``: ONNX (and int8) of the stage's kept model, checked by ONNX Runtime on
    test images, logged as metrics and MLflow models of the stage's run. Returns what ``export.json``
    holds; a finished export of the same weights is not done again."""
    cfg = ctx.stage.export
    where = ("stages", ctx.index, "export")
    model = kept_model(ctx, result)
    folder = ctx.dir / "export"
    record_file = folder / "export.json"
    digest = weights_sha256(model)
    if record_file.is_file():
        done = json.loads(record_file.read_text())
        if done.get("weights_sha256") == digest:
            return done
    pipeline = shipped_input(ctx, result.model_key)
    preprocess = pipeline.record(ctx.info)
    test = ctx.splits.test
    if not len(test):
        raise ctx.config_error(where, "export checks the ONNX model on test images, and the test split is empty")
    example = ctx.example(test, pipeline=pipeline)
    try:
        onnx_path = export_onnx(model, example, folder / "model.onnx", preprocess, opset=cfg.opset,
                                input_name=ctx.modality.input_name)
    except ExportError as exc:
        raise ctx.config_error(where, f"stage '{ctx.stage.name}': {exc}; the stage's other artifacts are "
                               "logged: remove `export` or change the model") from None
    session = OnnxModel(onnx_path, spin=False)  # a check: its threads must not spin once it is done
    check = check_onnx(session, model, _cpu_batches(ctx, _take(test, cfg.check_images), pipeline))
    if check["max_abs_diff"] > cfg.tolerance:
        raise ctx.config_error(where, f"stage '{ctx.stage.name}': ONNX Runtime's logits differ from PyTorch's by "
                               f"up to {check['max_abs_diff']:.3g} (tolerance {cfg.tolerance:g}) on "
                               f"{int(check['images'])} test images")
    fp32_accuracy = onnx_accuracy(session, _cpu_batches(ctx, test, pipeline))
    metrics = {"export.onnx.max_abs_diff": check["max_abs_diff"],
               "export.onnx.top1_agreement": check["top1_agreement"],
               "export.onnx.test.accuracy": fp32_accuracy, "export.onnx.size_mb": measure.file_mb(onnx_path)}
    record = {"weights_sha256": digest, "onnx": str(onnx_path), "onnx_test_accuracy": fp32_accuracy,
              "check": check, "int8": None, "int8_status": None, "preprocess": preprocess.to_dict()}
    name = f"{ctx.stage.name}-{result.model_key}"
    array = example.float().numpy()
    with torch.no_grad():
        logits = model(example.float()).numpy()
    record["onnx_model_uri"] = _log(ctx, lambda uri, run: log_onnx_model(
        uri, run, onnx_path, f"{name}-onnx", array, logits, preprocess))
    if cfg.int8:
        calibration = (x for x, _ in _cpu_batches(ctx, _take(ctx.splits.labeled, cfg.calibration_images), pipeline,
                                                   32))
        int8_path = quantize_int8(onnx_path, folder / "model.int8.onnx", calibration)
        int8_accuracy = onnx_accuracy(OnnxModel(int8_path, spin=False), _cpu_batches(ctx, test, pipeline))
        drop = fp32_accuracy - int8_accuracy
        metrics.update({"export.int8.test.accuracy": int8_accuracy, "export.int8.accuracy_drop": drop,
                        "export.int8.size_mb": measure.file_mb(int8_path)})
        record["int8"], record["int8_test_accuracy"] = str(int8_path), int8_accuracy
        if drop > cfg.max_int8_drop:
            status = (f"rejected: test accuracy {int8_accuracy:.4f} is {drop:.4f} below fp32's {fp32_accuracy:.4f} "
                      f"(max_int8_drop {cfg.max_int8_drop:g}); not logged as a model")
            print(f"warning: stage '{ctx.stage.name}': the int8 model is {status}", file=sys.stderr, flush=True)
            _log(ctx, lambda uri, run: ctx.tracker.log_file(run, int8_path, "export/rejected"))
        else:
            status = "shipped"
            record["int8_model_uri"] = _log(ctx, lambda uri, run: log_onnx_model(
                uri, run, int8_path, f"{name}-int8", array, logits, preprocess))
        record["int8_status"] = status
        _log(ctx, lambda uri, run: ctx.tracker.set_tags(run, {"mentor.export.int8": status}))
    ctx.log_metrics(metrics)
    _log(ctx, lambda uri, run: ctx.tracker.log_text(run, preprocess.to_json(), "export/preprocess.json"))
    if distributed.is_main():
        checkpoint.write_text_atomic(json.dumps(record, indent=2), record_file)
    return record


def _log(ctx: StageContext, call):
    """``call(tracking uri, stage run id)`` on rank 0 with a real tracker (a bench or other ranks record nothing)."""
    if not distributed.is_main() or isinstance(ctx.tracker, NullTracker):
        return None
    return call(ctx.tracker.uri, ctx.run_id)


# -- the compression report ------------------------------------------------------------
@dataclass
class _Entry:
    """One model of the run: the stage results (or models key) it stands for."""

    name: str
    key: str
    weights: str | None
    role: str
    aliases: set[str] = field(default_factory=set)
    export: dict | None = None


def _entries(state: RunState) -> list[_Entry]:
    exp = state.experiment
    teachers = {value for stage in exp.stages for _, ref, _, value in references(stage) if ref.target == "teacher"}
    entries: dict[tuple, _Entry] = {}

    def add(name, key, weights, aliases, export=None):
        entry = entries.setdefault((key, weights), _Entry(name, key, weights, "student" if weights else "model"))
        entry.aliases |= aliases
        entry.export = entry.export or export
        return entry

    for stage in exp.stages:
        result = state.results.get(stage.name)
        if result is None or result.model_key is None:
            continue
        record = Path(state.run_dir) / stage.name / "export" / "export.json"
        export = json.loads(record.read_text()) if record.is_file() else None
        aliases = {stage.name} | ({result.model_key} if not result.weights else set())
        add(stage.name, result.model_key, result.weights, aliases, export)
    for value in teachers:  # a models key that taught without a stage measuring it
        if value in exp.models and not any(value in e.aliases for e in entries.values()) and \
                value not in state.results:
            add(value, value, None, {value})
    for entry in entries.values():
        if entry.aliases & teachers:
            entry.role = "teacher"
    return list(entries.values())


def _reference(state: RunState, entries: list[_Entry]) -> str | None:
    exp = state.experiment
    wanted = exp.report.reference if exp.report and exp.report.reference else next(
        (value for stage in exp.stages for _, ref, _, value in references(stage) if ref.target == "teacher"), None)
    entry = next((e for e in entries if wanted in e.aliases), None)
    if entry is not None:
        entry.role = "teacher"
    return entry.name if entry else None


def _torch_accuracy(model: nn.Module, batches) -> float:
    """Top-1 accuracy of the fp32 model on the CPU, where the report measures it (one process, no
    collectives: under torchrun only rank 0 reports)."""
    right = seen = 0
    with torch.inference_mode():
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return right / seen


def _state_dict_mb(model: nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def compression_report(state: RunState, parent_run_id: str) -> pl.DataFrame | None:
    """Measure every model the run produced or used, in PyTorch and ONNX Runtime (and int8 where a stage
    exported one), log the table (markdown + CSV) and the accuracy-vs-latency figure to the parent run,
    and return the table."""
    cfg = state.experiment.report
    if cfg is None or not cfg.compression:
        return None
    ctx = StageContext(state, 0)
    entries = _entries(state)
    reference = _reference(state, entries)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = Path(state.run_dir) / "report"
    rows = []
    try:
        machine = measure.machine()
        for entry in entries:
            rows.extend(_measure(ctx, entry, folder, cfg))
    finally:
        torch.set_num_threads(threads)
    table = report_table.with_ratios(rows, reference)
    settings = (f"latency at batch 1 over {cfg.repeats} calls after {cfg.warmup} warm-up calls, throughput at "
                f"batch {cfg.throughput_batch}; ratios against {reference or 'no teacher'}")
    if distributed.is_main():
        state.tracker.log_text(parent_run_id, report_table.markdown(table, machine, settings),
                               "report/compression.md")
        state.tracker.log_text(parent_run_id, table.write_csv(), "report/compression.csv")
        state.tracker.log_figure(parent_run_id, report_table.pareto_figure(table, machine), "report/pareto.png")
        state.tracker.set_tags(parent_run_id, {"mentor.report.machine": machine})
    return table


def _measure(ctx: StageContext, entry: _Entry, folder: Path, cfg) -> list[dict]:
    result = StageResult(entry.name, "", entry.key, entry.weights)
    model = kept_model(ctx, result)
    pipeline = shipped_input(ctx, entry.key)
    example = ctx.example(ctx.splits.test if len(ctx.splits.test) else None, pipeline=pipeline)
    flops = measure.flops_per_image(model, example)
    base = {"model": entry.name, "role": entry.role, "parameters": float(measure.parameters(model)),
            "mflops": flops / 1e6}
    batch = cfg.throughput_batch
    test = ctx.splits.test
    accuracy = _torch_accuracy(model, _cpu_batches(ctx, test, pipeline)) if len(test) else None
    rows = [{**base, "format": "pytorch fp32", "size_mb": _state_dict_mb(model), "test_accuracy": accuracy,
             **measure.latency(measure.torch_runner(model), example, batch, warmup=cfg.warmup,
                               repeats=cfg.repeats)}]
    export = entry.export or {}
    onnx_path, note = export.get("onnx"), ""
    if onnx_path is None or not Path(onnx_path).is_file():
        try:
            onnx_path = export_onnx(model, example, folder / f"{entry.name}.onnx", pipeline.record(ctx.info),
                                    input_name=ctx.modality.input_name)
        except ExportError as exc:
            onnx_path, note = None, str(exc)
        onnx_accuracy_value = None
    else:
        onnx_accuracy_value = export.get("onnx_test_accuracy")
    files = [("onnx fp32", onnx_path, onnx_accuracy_value, "")]
    if export.get("int8") and Path(export["int8"]).is_file():
        status = export.get("int8_status") or ""
        files.append(("onnx int8", export["int8"], export.get("int8_test_accuracy"),
                      "" if status == "shipped" else status.split(";")[0]))
    for fmt, path, known_accuracy, row_note in files:
        if path is None:
            rows.append({**base, "format": fmt, "note": note})
            continue
        session = OnnxModel(path, threads=cfg.threads or torch.get_num_threads())
        found = known_accuracy if known_accuracy is not None else (
            onnx_accuracy(session, _cpu_batches(ctx, test, pipeline)) if len(test) else None)
        rows.append({**base, "format": fmt, "size_mb": measure.file_mb(path), "test_accuracy": found,
                     "note": row_note, **measure.latency(session.logits, example, batch, warmup=cfg.warmup,
                                                         repeats=cfg.repeats)})
    return rows


# -- the registry -------------------------------------------------------------------------
def register_stage(experiment) -> str:
    register_cfg = experiment.tracking.register
    return register_cfg.stage or [s.name for s in experiment.stages if trained_model_key(s) is not None][-1]


def check_register(state: RunState) -> None:
    """Before anything trains: ``tracking.register``'s name is free or holds this architecture."""
    exp = state.experiment
    if exp.tracking.register is None or not distributed.is_main():
        return
    stage = next(s for s in exp.stages if s.name == register_stage(exp))
    key = stage_model_key(exp, stage)
    ctx = StageContext(state, 0)
    model = ctx.build_model(key)
    try:
        check_registrable(state.tracker.client, exp.tracking.register.name,
                          architecture(exp, key, model, state.splits.info, ctx.model_input(key)))
    except RegistryConflict as exc:
        from .config.errors import located_error

        raise located_error(exp, ("tracking", "register", "name"), str(exc)) from None


def register_student(state: RunState, parent_run_id: str, stage_run_id: str) -> str | None:
    """``tracking.register``: the kept model of the chosen stage as a new registry version, tagged with the
    experiment, stage and metrics; returns ``models:/<name>/<version>`` (also the parent's
    ``mentor.registered`` tag, which stops a resumed run from registering twice)."""
    exp = state.experiment
    cfg = exp.tracking.register
    if cfg is None or not distributed.is_main():
        return None
    done = state.tracker.client.get_run(parent_run_id).data.tags.get("mentor.registered")
    if done:
        return done
    stage_name = register_stage(exp)
    result = state.results[stage_name]
    index = next(i for i, s in enumerate(exp.stages) if s.name == stage_name)
    ctx = StageContext(state, index)
    model = kept_model(ctx, result)
    pipeline = shipped_input(ctx, result.model_key)
    record = ctx.dir / "export" / "export.json"
    onnx_path = json.loads(record.read_text())["onnx"] if record.is_file() else None
    metrics = {k: f"{v:.6g}" for k, v in result.metrics.items() if k.startswith("kept.")}
    tags = {"mentor.experiment": exp.name, "mentor.stage": stage_name, "mentor.run_id": parent_run_id,
            "mentor.stage_run_id": stage_run_id, **{f"mentor.{k}": v for k, v in metrics.items()}}
    version = register(state.tracker.uri, stage_run_id, model, cfg.name,
                       architecture=architecture(exp, result.model_key, model, state.splits.info, pipeline),
                       example=ctx.example(ctx.splits.test if len(ctx.splits.test) else None,
                                           pipeline=pipeline).float().numpy(),
                       preprocess=pipeline.record(ctx.info), onnx_path=Path(onnx_path) if onnx_path else None,
                       tags=tags, description=f"mentor: stage {stage_name} of experiment {exp.name}")
    uri = f"models:/{cfg.name}/{version.version}"
    state.tracker.set_tags(parent_run_id, {"mentor.registered": uri})
    return uri
