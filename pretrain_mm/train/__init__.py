"""Training: distributed set-up, FSDP2 wrapping, optimiser and schedule, checkpoints, metrics, the loop."""
