"""Tensor parallelism: one model split across ranks, each holding a shard of every layer."""
