"""GemNet-OC backbone (pure PyTorch, weight-compatible with fairchem-core 1.10)."""
