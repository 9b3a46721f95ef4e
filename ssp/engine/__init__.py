"""Training: stage inputs, batching, the predict loop, distributed setup, the train loop."""
