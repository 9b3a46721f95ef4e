"""Preprocessing stages: frames and audio, log-mel, optical flow, MLLM prompts."""
