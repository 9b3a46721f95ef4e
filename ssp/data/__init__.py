"""Datasets: AVSBench readers, torch datasets, audio input (VGGish log-mel), the generated
benchmark, validation, and the params options of the stage commands (cli.py)."""
