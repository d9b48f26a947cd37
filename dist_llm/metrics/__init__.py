"""Metric sinks (console, JSONL, W&B) and the MFU peak."""
