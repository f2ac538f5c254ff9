"""Parity: every deployed stage against the PyTorch reference, with stated tolerances (``checks``), for weight-only
quantized transformers against fp32 (``quantized``), on seeded inputs (``inputs``), as a report (``report``)."""
