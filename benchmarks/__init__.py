"""Benchmarks that back torchgrpc's performance claims: `make benchmark` writes RESULTS.md."""
