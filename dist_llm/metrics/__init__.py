"""Metric sinks (console, JSONL, W&B, TensorBoard) and the MFU peak."""
