"""Benchmarks of hitl against plain Celery (``python bench/run.py``); not part of the test suite."""
