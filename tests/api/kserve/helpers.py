"""Shared pieces of the Triton / KServe v2 tests: the served names, the key, SSE reading and
the ensemble's inputs as numpy arrays, shaped as TensorRT-LLM's clients send them."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

MODEL_NAMES = ("ensemble", "tensorrt_llm", "smollm2")
PROMPT = "What is machine learning?"


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of a generate_stream body (Triton sends no [DONE])."""
    frames = raw.split(b"\n\n")
    assert frames[-1] == b"", raw[-200:]
    events = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: "), frame
        events.append(json.loads(frame[len(b"data: "):]))
    return events


def ensemble_arrays(*, prompt: str = PROMPT, max_tokens: int = 12, stream: bool | None = None,
                    **extra: Any) -> dict[str, np.ndarray]:
    """Inputs by name, each [1, 1] as TensorRT-LLM's example clients build them; extra
    ints go as INT32, floats as FP32, bools as BOOL and strings as BYTES."""
    arrays = {"text_input": np.array([[prompt]], dtype=object),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32)}
    if stream is not None:
        arrays["stream"] = np.array([[stream]], dtype=bool)
    for name, value in extra.items():
        dtype = (bool if isinstance(value, bool) else np.int32 if isinstance(value, int)
                 else np.float32 if isinstance(value, float) else object)
        arrays[name] = np.array([[value]], dtype=dtype)
    return arrays


def infer_inputs(module, arrays: dict[str, np.ndarray]) -> list:
    """tritonclient InferInputs (module: tritonclient.http or tritonclient.grpc)."""
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, array in arrays.items():
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def text_of(result) -> str:
    """text_output of an InferResult ([batch, beam] BYTES) as text."""
    return result.as_numpy("text_output").reshape(-1)[0].decode("utf-8")
