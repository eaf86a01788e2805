"""Stage 3: ONNX graphs from the export modules, and their parity with torch on ONNX Runtime."""
