"""Typed errors the scheduler raises. All are ValueError subclasses: the caller passed
something the scheduler cannot act on, and the message says what."""

from __future__ import annotations


class RequestRejectedError(ValueError):
    """add() refused a request that could never run. `code` is machine-readable:

    context_length_exceeded   prompt + max_tokens is beyond max_model_len
    kv_cache_too_small        the request alone needs more KV blocks than the whole pool
    empty_prompt              no prompt token to compute logits from
    duplicate_request_id      a live request already has this req_id
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ModelOutputMismatchError(ValueError):
    """update() got a ModelOutput whose req_ids are not the SchedulerOutput's sampled ones."""


class StaleSchedulerOutputError(ValueError):
    """update() got a SchedulerOutput that is not the latest one from schedule() (or got
    it twice): a scheduled chunk does not start where the request's computed tokens end."""
