"""The one training engine: method interface, DDP, AMP, checkpoints, schedules, verification."""
