"""ONNX graphs: the backbone and the sparse head exported, quantized (int8, GPTQ) and checked."""
