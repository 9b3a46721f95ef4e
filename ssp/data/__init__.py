"""Datasets: AVSBench readers, torch datasets, audio input (VGGish log-mel), the generated
benchmark, and validation."""
