"""What the training stages share: the run context (device, precision, ranks, random streams),
index batches and sharded inference, optimisers and schedules, and the one training loop."""
