"""Operations: MLflow tracking and model registry, stage-output fingerprints, launching
training processes (one, or torchrun across GPUs and nodes)."""
