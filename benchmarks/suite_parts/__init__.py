"""The parts of ``benchmarks/gpu_suite.py``: timing helpers, attention/GEMM/bandwidth, DiT forward, VAE decode,
the report table."""
