"""dist_llm: pretraining Transformer language models on one to many machines."""

__version__ = "0.1.0"
