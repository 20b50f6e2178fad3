"""Benchmarks: `inflightd bench serve|sweep|offline` (see cli.py)."""
