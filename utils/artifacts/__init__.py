"""What the old model leaves for the new one: artifact manifests and guards, per-class statistics."""
