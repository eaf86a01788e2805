"""Stage 5 (GPU): FP16 TensorRT engines from the ONNX graphs: the lazy build plan, the FP32 guards,
validation against ONNX Runtime, ONNX lint, and ``python -m export.tensorrt``."""
