"""`dist-llm report`: a training run as PNG plots and a one-page markdown summary.

Modules: history (metrics.jsonl -> one timeline, resumes stitched), facts (config.yaml and committed
checkpoints), plots (the PNGs), summary (summary.md), build (`write_report`), cli (the subcommand).
Nothing is imported here, so `dist-llm --help` does not pay for matplotlib.
"""
