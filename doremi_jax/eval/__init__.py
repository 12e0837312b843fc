"""Evaluation: per-domain perplexity (`perplexity.py`)."""
