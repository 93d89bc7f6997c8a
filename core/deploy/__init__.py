"""Shipping a model: ONNX export checked by ONNX Runtime, int8 quantization, size and latency
measurements, the compression report, the MLflow model registry and batch prediction.

One module per idea: ``preprocess`` (what a model expects of an image, recorded with it),
``onnx_export``, ``quantize``, ``measure``, ``report``, ``mlflow_models`` and ``predict``.
"""
