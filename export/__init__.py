"""The export stage: eager model -> TorchScript + ONNX artifacts, checked for parity.

Run it with `make export` or `python -m export`.
"""
