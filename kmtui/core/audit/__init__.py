"""The hash-chained trail, its signed checkpoints and head, export and forwarding."""
