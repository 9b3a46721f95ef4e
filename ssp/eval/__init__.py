"""Evaluation and inference commands: evaluate, stage1-masks, predict."""
