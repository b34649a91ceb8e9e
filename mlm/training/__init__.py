"""Training: the task and its compilation, the loop, precision and XLA, distribution."""
