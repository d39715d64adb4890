"""Graph capture and export: torch.export programs, ONNX, TensorRT engines."""
