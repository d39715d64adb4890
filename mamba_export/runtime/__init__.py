"""Runtimes that serve exported artifacts (ONNX Runtime, TensorRT)."""
