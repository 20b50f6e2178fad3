"""The batched sampler: greedy and its equivalents, the cuts, penalties, seeds, logprobs."""

from __future__ import annotations

import pytest
import torch

from server.engine.step.penalties import PenaltyTensors, apply_penalties
from server.engine.step.sampler import RequestSamplingState, Sampler, step_seed
from server.scheduler.request import SamplingParams

VOCAB = 32


def state(*, prompt_token_ids: tuple[int, ...] = (1, 2, 3),
          output_token_ids: tuple[int, ...] = (), **params) -> RequestSamplingState:
    return RequestSamplingState(sampling_params=SamplingParams(**params),
                                prompt_token_ids=prompt_token_ids,
                                output_token_ids=list(output_token_ids))


def random_logits(*, rows: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def sample(logits: torch.Tensor, states: list[RequestSamplingState], *,
           seed: int = 0) -> tuple[int, ...]:
    return Sampler(device="cpu", seed=seed).sample(logits, states).sampled_token_ids


def test_temperature_zero_takes_the_argmax_of_every_row():
    logits = random_logits(rows=6, seed=1)
    tokens = sample(logits, [state(temperature=0.0) for _ in range(6)])
    assert list(tokens) == logits.argmax(dim=-1).tolist()


def test_temperature_too_small_to_divide_by_is_greedy():
    logits = random_logits(rows=4, seed=2, scale=50.0)
    tokens = sample(logits, [state(temperature=1e-9) for _ in range(4)])
    assert list(tokens) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_top_k_one_equals_greedy(seed):
    logits = random_logits(rows=8, seed=seed, scale=0.5)
    tokens = sample(logits, [state(temperature=1.5, top_k=1) for _ in range(8)], seed=seed)
    assert list(tokens) == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_tiny_top_p_equals_greedy(seed):
    logits = random_logits(rows=8, seed=seed, scale=0.5)
    tokens = sample(logits, [state(temperature=1.0, top_p=1e-6) for _ in range(8)], seed=seed)
    assert list(tokens) == logits.argmax(dim=-1).tolist()


def test_greedy_rows_stay_greedy_beside_random_rows():
    logits = random_logits(rows=4, seed=3, scale=0.3)
    states = [state(temperature=0.0), state(temperature=2.0), state(temperature=0.0),
              state(temperature=2.0, seed=5)]
    tokens = sample(logits, states)
    assert (tokens[0], tokens[2]) == (int(logits[0].argmax()), int(logits[2].argmax()))


def test_min_p_keeps_only_tokens_near_the_most_likely():
    logits = torch.log(torch.tensor([[0.40, 0.25, 0.19, 0.16] + [0.0] * (VOCAB - 4)]))
    states = [state(temperature=1.0, min_p=0.5)] * 400
    tokens = sample(logits.expand(400, VOCAB).clone(), states)
    # 0.5 * 0.40 = 0.20: tokens 0 and 1 survive, 2 and 3 (and the zero-probability rest) do not.
    assert set(tokens) == {0, 1}


def test_top_k_draws_only_from_the_k_most_likely():
    logits = random_logits(rows=1, seed=4, scale=0.2).expand(600, VOCAB).clone()
    tokens = sample(logits, [state(temperature=1.0, top_k=3)] * 600)
    assert set(tokens) == set(logits[0].topk(3).indices.tolist())


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05] + [0.0] * (VOCAB - 4))
    logits = torch.log(probs).expand(600, VOCAB).clone()
    tokens = sample(logits, [state(temperature=1.0, top_p=0.7)] * 600)
    assert set(tokens) == {0, 1}


def test_draws_follow_the_temperature_scaled_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0] + [-30.0] * (VOCAB - 4)])
    rows = 8000
    tokens = torch.tensor(sample(logits.expand(rows, VOCAB).clone(),
                                 [state(temperature=2.0)] * rows, seed=7))
    observed = torch.bincount(tokens, minlength=VOCAB)[:4].float() / rows
    expected = torch.softmax(logits[0] / 2.0, dim=-1)[:4]
    assert torch.allclose(observed, expected, atol=0.02), (observed, expected)


def test_presence_and_frequency_penalise_generated_tokens_only():
    logits = torch.zeros(1, VOCAB)
    penalties = PenaltyTensors.build(presence=[0.25], frequency=[0.5], repetition=[1.0],
                                     prompt_token_ids=[(9,)], output_token_ids=[(5, 5, 7)],
                                     vocab_size=VOCAB, device="cpu")
    penalised = apply_penalties(logits, penalties)
    expected = torch.zeros(1, VOCAB)
    expected[0, 5] = -(2 * 0.5 + 0.25)
    expected[0, 7] = -(1 * 0.5 + 0.25)
    assert torch.equal(penalised, expected)


def test_repetition_penalty_shrinks_seen_logits_towards_zero_side():
    logits = torch.full((1, VOCAB), 1.0)
    logits[0, 1], logits[0, 4], logits[0, 6] = 3.0, -2.0, -2.0
    penalties = PenaltyTensors.build(presence=[0.0], frequency=[0.0], repetition=[2.0],
                                     prompt_token_ids=[(1, 1)], output_token_ids=[(4,)],
                                     vocab_size=VOCAB, device="cpu")
    penalised = apply_penalties(logits, penalties)
    expected = logits.clone()
    expected[0, 1], expected[0, 4] = 1.5, -4.0  # positive divided, negative multiplied
    assert torch.equal(penalised, expected)


def test_frequency_penalty_turns_greedy_away_from_a_repeated_token():
    logits = torch.zeros(2, VOCAB)
    logits[:, 3], logits[:, 8] = 2.0, 1.5
    states = [state(temperature=0.0, output_token_ids=(3,)),
              state(temperature=0.0, output_token_ids=(3,), frequency_penalty=1.0)]
    assert sample(logits, states) == (3, 8)


def test_seeded_request_gets_the_same_tokens_alone_and_in_a_batch():
    seeded = dict(temperature=1.0, top_p=0.9, seed=1234)
    alone, batched = [], []
    for step in range(6):
        row = random_logits(rows=1, seed=100 + step, scale=0.5)
        history = tuple(alone)
        alone += sample(row, [state(output_token_ids=history, **seeded)], seed=step)
        others = random_logits(rows=7, seed=200 + step)
        logits = torch.cat((others[:3], row, others[3:]))
        companions = [state(temperature=0.7), state(temperature=0.0), state(seed=99),
                      state(temperature=1.3, top_k=5, output_token_ids=(1, 2)),
                      state(min_p=0.2), state(temperature=0.9, seed=7, output_token_ids=(4,)),
                      state(presence_penalty=1.0, output_token_ids=(0,))]
        states = companions[:3] + [state(output_token_ids=tuple(batched), **seeded)] + \
            companions[3:]
        batched.append(sample(logits, states, seed=1000 + step)[3])
    assert alone == batched


def test_seed_noise_moves_on_with_each_generated_token():
    assert step_seed(42, 0) != step_seed(42, 1)
    assert step_seed(42, 3) == step_seed(42, 3)
    flat = torch.zeros(1, VOCAB)
    tokens = [sample(flat, [state(seed=42, output_token_ids=(0,) * n)])[0] for n in range(8)]
    assert len(set(tokens)) > 1


def test_logprobs_are_log_softmax_of_the_penalised_logits():
    logits = random_logits(rows=3, seed=9)
    states = [state(temperature=0.0, logprobs=5, output_token_ids=(2,), frequency_penalty=1.0),
              state(temperature=0.8, logprobs=0),
              state(temperature=0.0)]
    out = Sampler(device="cpu", seed=0).sample(logits, states)
    assert out.logprobs is not None and out.logprobs[2] is None
    penalised = logits[0].clone()
    penalised[2] -= 1.0
    reference = torch.log_softmax(penalised, dim=-1)
    first = out.logprobs[0]
    assert first.token_id == out.sampled_token_ids[0] == int(penalised.argmax())
    assert first.logprob == pytest.approx(reference[first.token_id].item(), abs=1e-6)
    assert list(first.top_token_ids) == reference.topk(5).indices.tolist()
    assert first.top_logprobs == pytest.approx(reference.topk(5).values.tolist(), abs=1e-6)
    second = out.logprobs[1]
    assert second.top_token_ids == () and second.top_logprobs == ()
    second_reference = torch.log_softmax(logits[1], dim=-1)[second.token_id].item()
    assert second.logprob == pytest.approx(second_reference, abs=1e-6)


def test_no_logprobs_when_no_request_asks():
    out = Sampler(device="cpu").sample(random_logits(rows=2, seed=0), [state(), state()])
    assert out.logprobs is None
