"""Evaluation: per-domain perplexity (`perplexity.py`); downstream accuracy by greedy
decoding with a key/value cache (`decoding.py`, `downstream.py`) on the local cloze
task (`cloze.py`) and the one-shot TFDS tasks (`data/oneshot_tasks.py`, tensorflow)."""
