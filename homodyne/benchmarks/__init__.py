"""Benchmarks: this engine per tier and device against scipy and nlsq, on the same data."""
