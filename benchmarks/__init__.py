"""Benchmark scripts and profiles of art-gifd (``python -m benchmarks PROFILE`` runs a benchmark profile)."""
