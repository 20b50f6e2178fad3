"""bench/gpu_probes.py's kernel groups: each of our kernels' names lands where a step's
breakdown should count it (a GEMV with a GELU epilogue is a GEMV, not an activation)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.gpu_probes import kernel_ms_by_group


@dataclass
class Span:
    us: float

    def elapsed_us(self) -> float:
        return self.us


@dataclass
class Event:
    name: str
    us: float
    device_type: str = "DeviceType.CUDA"

    @property
    def time_range(self) -> Span:
        return Span(self.us)


class Profile:
    def __init__(self, *events: Event) -> None:
        self._events = events

    def events(self) -> tuple[Event, ...]:
        return self._events


def test_each_kernel_of_a_gpt2_step_falls_in_its_group():
    profile = Profile(Event("add_layer_norm_bf16_vec8", 2.0), Event("rms_norm_bf16_vec8", 1.0),
                      Event("gemv_gelu_erf_bf16_m1", 9.0), Event("gemv_bf16_m1", 7.0),
                      Event("gelu_erf_bf16_vec8", 1.5),
                      Event("paged_attention_bf16_d64_w1", 4.0),
                      Event("rope_and_cache_bf16", 3.0), Event("elementwise_kernel", 1.0),
                      Event("cudaLaunchKernel", 5.0, device_type="DeviceType.CPU"))
    assert kernel_ms_by_group(profile) == {"norms": 0.003, "GEMM": 0.016, "gelu": 0.0015,
                                           "attention": 0.004,
                                           "rope + KV write": 0.003, "other": 0.001}


def test_the_decode_stack_and_the_bulk_decode_kernel_have_their_groups():
    profile = Profile(Event("decode_stack_bf16_d128_gelu_tanh", 870.0),
                      Event("paged_decode_bulk_bf16_kvfp8_d128", 20.0),
                      Event("gemv_logits_bf16_m1", 67.0))
    assert kernel_ms_by_group(profile) == {"decode stack": 0.87, "attention": 0.02,
                                           "GEMM": 0.067}
