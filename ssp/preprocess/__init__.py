"""Preprocessing stages: frames and audio, optical flow, MLLM prompts."""
