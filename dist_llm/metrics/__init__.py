"""Metric sinks (console, JSONL) and the MFU peak."""
