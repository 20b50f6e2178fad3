"""TokenFeedback: the next step's pending inputs come from the last step's sampled ids."""

from __future__ import annotations

import pytest
import torch

from server.engine.step.async_output import InFlightStep, MissingPendingTokenError, TokenFeedback


def test_pending_rows_get_the_ids_sampled_for_their_requests_in_any_order():
    feedback = TokenFeedback()
    feedback.remember(["a", "b", "c"], torch.tensor([11, 22, 33]))
    input_ids = torch.tensor([5, 0, 6, 0, 0])
    feedback.write_into(input_ids, rows=[1, 3, 4], req_ids=["c", "a", "b"])
    assert input_ids.tolist() == [5, 33, 6, 11, 22]


def test_the_steady_batch_is_copied_row_for_row():
    feedback = TokenFeedback()
    feedback.remember(["a", "b"], torch.tensor([7, 8]))
    input_ids = torch.zeros(4, dtype=torch.int64)
    feedback.write_into(input_ids, rows=[0, 1], req_ids=["a", "b"])
    assert input_ids.tolist() == [7, 8, 0, 0]


def test_a_request_the_last_step_did_not_sample_is_an_error():
    feedback = TokenFeedback()
    feedback.remember(["a"], torch.tensor([7]))
    with pytest.raises(MissingPendingTokenError, match="'z'"):
        feedback.write_into(torch.zeros(2, dtype=torch.int64), rows=[0], req_ids=["z"])


def test_an_in_flight_step_on_the_cpu_is_ready_at_once():
    step = InFlightStep.copying(("a", "b"), torch.tensor([3, 4]))
    output = step.output()
    assert output.req_ids == ("a", "b") and output.sampled_token_ids == (3, 4)
