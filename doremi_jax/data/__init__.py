"""The data layer: corpora, vocabularies, mixture batches; seqio tasks in `tasks.py`.

The only package that may import tensorflow or seqio (and only `tasks.py` does).
"""
