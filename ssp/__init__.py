"""Stepping Stone Plus (SSP): audio-visual semantic segmentation with optical-flow
and MLLM text prompts, as a reproducible pipeline."""

__version__ = "0.1.0"
