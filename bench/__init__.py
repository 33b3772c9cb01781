"""Benchmarks of dbregistry against plain SQLAlchemy, printed side by side: ``python -m bench``.

See ``bench/README.md`` for the figures, their baselines and targets, and the last results.
"""
