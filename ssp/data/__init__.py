"""Datasets: AVSBench readers, the generated benchmark, validation."""
