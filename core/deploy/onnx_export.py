"""A PyTorch model as an ONNX file, by ``torch.onnx.export`` (the torch.export-based exporter), checked by
ONNX Runtime against the PyTorch model on real images.

The file takes any batch size (a dynamic first axis named ``batch``), has one
input ``images`` (float32, normalised, NCHW; another modality names its own,
``Modality.input_name``) and one output ``logits``, and
carries the preprocessing record (``mentor.deploy.preprocess``) in its
metadata. An op the exporter cannot translate is an ``ExportError`` that names
the op.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .preprocess import Preprocess

INPUT, OUTPUT = "images", "logits"


class ExportError(Exception):
    """The model cannot be exported to ONNX (an op the exporter does not handle, a dynamic shape)."""


def _op_named(text: str) -> str | None:
    """The first aten/prim op an exporter error mentions, if any."""
    match = re.search(r"\b((?:aten|prims|torch\.ops\.\w+)\.[A-Za-z_][\w.]*)", text)
    return match.group(1).rstrip(".") if match else None


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, preprocess: Preprocess | None = None,
                opset: int | None = None, input_name: str = INPUT) -> Path:
    """Write ``model`` (on the CPU, in eval mode, float32) to ``path`` as ONNX; returns ``path``. The input is
    named by the data's modality (``Modality.input_name``: ``images`` for images)."""
    import onnx

    model = getattr(model, "_orig_mod", model).float().cpu().eval()
    example = example.float().cpu()
    if example.shape[0] < 2:  # a batch of 1 would specialise the batch axis
        example = example.expand(2, *example.shape[1:]).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), _quiet_loggers():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name], output_names=[OUTPUT],
                                        dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
                                        external_data=False)
    except Exception as exc:  # the exporter raises many types; all mean "cannot export this model"
        text = f"{exc}"
        op = _op_named(text)
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        what = f"the op {op} has no ONNX translation" if op else first[:300]
        raise ExportError(f"cannot export {type(model).__name__} to ONNX: {what}") from None
    proto = program.model_proto
    if preprocess is not None:
        preprocess.attach(proto)
    onnx.save_model(proto, str(path))
    return path


@contextlib.contextmanager
def _quiet_loggers():
    """The exporter reports its progress through logging; a run's terminal is not the place."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class OnnxModel:
    """An ONNX file in an ONNX Runtime CPU session: ``logits(x)`` for a normalised float batch.

    ``spin=False`` for a session that only checks a file: ONNX Runtime's threads then sleep between runs
    instead of spinning (its default, for latency), so a session still alive cannot take CPU from
    whatever is measured next."""

    def __init__(self, path: Path | str, threads: int | None = None, spin: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    @property
    def preprocess(self) -> Preprocess | None:
        return Preprocess.from_onnx_metadata(self.metadata)

    def logits(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        array = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        return self.session.run(None, {self.input.name: np.ascontiguousarray(array)})[0]


def check_onnx(onnx_model: OnnxModel, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) \
        -> dict[str, float]:
    """ONNX Runtime against PyTorch on ``batches`` (normalised images, labels): the largest absolute
    difference of any logit, the share of images whose top-1 class agrees, and both accuracies."""
    model = getattr(model, "_orig_mod", model).float().cpu().eval()
    worst, agree, right_torch, right_onnx, seen = 0.0, 0, 0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            x, y = x.float().cpu(), y.cpu()
            expected = model(x).float()
            found = torch.from_numpy(onnx_model.logits(x))
            worst = max(worst, float((expected - found).abs().max()))
            agree += int((expected.argmax(1) == found.argmax(1)).sum())
            right_torch += int((expected.argmax(1) == y).sum())
            right_onnx += int((found.argmax(1) == y).sum())
            seen += len(y)
    if not seen:
        return {}
    return {"max_abs_diff": worst, "top1_agreement": agree / seen, "torch_accuracy": right_torch / seen,
            "onnx_accuracy": right_onnx / seen, "images": float(seen)}


def onnx_accuracy(onnx_model: OnnxModel, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float | None:
    """Top-1 accuracy of an ONNX model on ``batches``."""
    right = seen = 0
    for x, y in batches:
        right += int((torch.from_numpy(onnx_model.logits(x)).argmax(1) == y.cpu()).sum())
        seen += len(y)
    return right / seen if seen else None
