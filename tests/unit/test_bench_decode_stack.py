"""bench/decode_stack.py's reading of the stack's stamps (the GPU run itself is a benchmark)."""

import torch

from bench.decode_stack import attention_lateness


def test_attention_lateness_tells_each_heads_last_split_from_the_others():
    # 2 heads x 3 splits + 1 CTA without a task, 2 layers; head 0's split 2 and head 1's
    # split 0 count last, by 3 us
    counted = torch.tensor([[10.0, 20.0], [10.0, 20.0], [13.0, 23.0],
                            [13.0, 23.0], [10.0, 20.0], [10.0, 20.0],
                            [9.0, 19.0]], dtype=torch.float64)
    late = attention_lateness(counted, num_heads=2, num_splits=3)
    assert late["last split"] == 3.0
    assert late["other splits"] == 0.0
    assert late["split 0"] == 1.5
    assert late["no task"] == -1.0


def test_attention_lateness_with_one_split_has_no_other_splits():
    counted = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    late = attention_lateness(counted, num_heads=3, num_splits=1)
    assert "other splits" not in late and "no task" not in late
    assert late["last split"] == late["split 0"]
