"""Tests of hareid.deploy: int8 quantisation, ONNX / TorchScript export, the Embedder."""
