"""Whole-step kernels: a decode step's layers in one launch where the per-op kernels' boundaries
cost more than their work (batch 1 of the small GPT-2-style models)."""
