"""Shipping a run's models: a stage's ``export:`` and the experiment's ``report:`` (README, "Ship the student")."""

from __future__ import annotations

from pydantic import Field

from ..params import Params


class ExportConfig(Params):
    """``export:`` on a stage: its kept model as ONNX, checked by ONNX Runtime, optionally int8 too."""

    int8: bool = Field(default=False, description="also an int8 model by ONNX Runtime's static quantization, "
                       "calibrated on training images, with its own test accuracy")
    calibration_images: int = Field(default=256, ge=1, description="training images that calibrate int8 ranges")
    max_int8_drop: float = Field(
        default=0.01, ge=0, le=1, description="largest test-accuracy drop (fp32 minus int8, as a fraction) for "
        "which the int8 model ships; beyond it the model is reported as rejected and not logged as a model")
    check_images: int = Field(default=1024, ge=1, description="test images on which ONNX Runtime is compared "
                              "with PyTorch (max abs logit difference, top-1 agreement)")
    tolerance: float = Field(default=1e-3, gt=0, description="largest max abs logit difference that passes "
                             "the check; beyond it the stage fails (the ONNX file would not be the model)")
    opset: int | None = Field(default=None, ge=7, description="ONNX opset; default: the exporter's")


class ReportConfig(Params):
    """``report:``: the compression report at the end of a run (every model the experiment produced or used)."""

    compression: bool = Field(default=True, description="measure and log the compression report")
    reference: str | None = Field(
        default=None, description="the row every ratio is against: a stage or a models key; default: the first "
        "teacher a stage names")
    warmup: int = Field(default=10, ge=0, description="untimed calls before latency is measured")
    repeats: int = Field(default=50, ge=3, description="timed calls at batch 1 (p50 and p95)")
    throughput_batch: int = Field(default=64, ge=1, description="batch size of the throughput measurement")
    threads: int | None = Field(default=None, ge=1, description="CPU threads for the measurement (torch and "
                                "ONNX Runtime); default: torch's")
