"""What the paged attention kernels do to their scores (csrc/attention_scores.cuh): the
scale, and on the "_extras" kernels soft-capping, ALiBi and a sliding window, with the torch
reference's semantics (ops/torch_ref.py causal_attention):

    x = q.k * scale;  x = softcap * tanh(x / softcap);  x += slope[head] * (key - query pos)
    a key at or before query pos - window is not seen (its score is -inf)

Each kernel has an "_extras" build that does the latter two, so the plain ones keep their
registers; a plan is made for one or the other (plan_for(..., extras=True)), as their
occupancy may differ. The kernels' softmax works in base 2, so the launch passes each constant times log2(e);
tanh is computed as 1 - 2 / (e^(2 z) + 1), z = x / softcap, whence cap_in = 2 scale log2(e)
/ softcap. The slopes stay a device tensor the model owns (read by the kernel, so a captured
CUDA graph keeps reading the same memory).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from server.engine.gpu.kernel_args import (KernelArgumentError, check_contiguous, check_device,
                                           check_dtype, check_shape)

LOG2_E = 1.4426950408889634


class AttentionExtrasError(KernelArgumentError):
    """softcap or alibi_slopes is malformed, or the plan was made for the other kernels."""


def wants_extras(softcap: float | None, alibi_slopes: torch.Tensor | None,
                 window: int | None = None) -> bool:
    """Whether these arguments need the _extras kernels."""
    return softcap is not None or alibi_slopes is not None or window is not None


def score_args(device: torch.device, *, num_heads: int, scale: float,
               softcap: float | None, alibi_slopes: torch.Tensor | None,
               window: int | None = None) -> tuple:
    """The kernels' (scale_log2, alibi_slopes, cap_in, cap_out, window) arguments, checked."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or window < 1):
        raise AttentionExtrasError(f"window must be a positive number of keys, got {window!r}")
    cap_in = cap_out = 0.0
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) \
                or not math.isfinite(softcap) or softcap <= 0:
            raise AttentionExtrasError(f"softcap must be a positive finite number, got "
                                       f"{softcap!r}")
        cap_in, cap_out = 2.0 * scale * LOG2_E / softcap, softcap * LOG2_E
    slopes = 0
    if alibi_slopes is not None:
        check_device(device, alibi_slopes=alibi_slopes)
        check_dtype(torch.float32, alibi_slopes=alibi_slopes)
        check_shape("alibi_slopes", alibi_slopes, (num_heads,))
        check_contiguous(alibi_slopes=alibi_slopes)
        slopes = alibi_slopes.data_ptr()
    return (np.float32(scale * LOG2_E), slopes, np.float32(cap_in), np.float32(cap_out),
            np.int32(window or 0))


def check_plan_extras(launches, extras: bool) -> None:
    """A plan sized for the plain kernels' occupancy must not launch the _extras ones, nor
    the other way round."""
    for launch in launches:
        if launch.extras != extras:
            what = "with" if extras else "without"
            raise AttentionExtrasError(
                f"the plan was made for the {'_extras' if launch.extras else 'plain'} "
                f"kernels, but this call runs {what} soft-capping, ALiBi or a window; make the "
                f"plan with plan_for(..., extras={extras})")
