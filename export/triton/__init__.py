"""Stage 4: the Triton model repository, for ONNX Runtime (CPU) or TensorRT plans (GPU), with every
``config.pbtxt`` built as a typed ``ModelConfig`` protobuf and the core it runs bundled inside."""
