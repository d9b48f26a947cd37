"""Downstream tasks scored in the training loop by log-likelihood, as lm-eval-harness does.

files       the task file format (JSONL, multiple-choice or completion) and its checks
scoring     requests, fixed-shape batches over data-parallel ranks, accuracies
continuation  a continuation task generated from a prepared dataset (the default corpus's)
convert     HellaSwag, ARC and PIQA in their public JSONL forms to task files
cli         `dist-llm tasks make | convert | check`
"""
