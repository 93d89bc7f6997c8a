"""An int8 ONNX model by ONNX Runtime's static quantization, calibrated on training images.

Weights per channel and activations per tensor (QDQ format, int8), with
activation ranges taken from the calibration images by min/max. The
caller measures the int8 model's accuracy and decides whether it ships.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .onnx_export import INPUT
from .preprocess import KEY


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over normalised image batches."""

    def __init__(self, batches: Iterable[torch.Tensor], input_name: str = INPUT):
        self._batches = iter(batches)
        self.input_name = input_name

    def get_next(self):
        x = next(self._batches, None)
        return None if x is None else {self.input_name: np.ascontiguousarray(x.float().cpu().numpy())}

    def rewind(self):  # onnxruntime may call it; the images are read once
        pass


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: Iterable[torch.Tensor]) -> Path:
    """Write the int8 version of the ONNX file ``fp32_path`` to ``int8_path``, keeping its metadata."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime.quantization logs through the root logger
    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference and graph folding, as ONNX Runtime recommends before quantizing
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception:  # a graph the pre-processor cannot fold is quantized as it is
            prepared = Path(fp32_path)
        input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name  # the modality's
        quantize_static(str(prepared), str(int8_path), _Calibration(calibration, input_name),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
    original = onnx.load(str(fp32_path), load_external_data=False)
    record = next((p.value for p in original.metadata_props if p.key == KEY), None)
    if record is not None:
        quantized = onnx.load(str(int8_path))
        entry = quantized.metadata_props.add()
        entry.key, entry.value = KEY, record
        onnx.save_model(quantized, str(int8_path))
    return int8_path
