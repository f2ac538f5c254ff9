"""Inference: backends (torch, onnxruntime, tensorrt), KV-cached generation, the pipeline."""
