"""Which layers attend within a sliding window, read from a config.json dict.

A query at position p of a sliding layer sees the keys at positions p - window + 1 ..= p
(transformers' `kv_idx > q_idx - sliding_window`). Mistral v0.1, Phi-3 and Starcoder2
slide in every layer; Qwen2 and Qwen3 (with use_sliding_window) from max_window_layers
on; Gemma 2 in every other layer and Gemma 3 in five of six, as their layer_types say.
"""

from __future__ import annotations

from typing import Any

# families whose config names each layer's kind (layer_types), or implies it
_LAYER_TYPED = ("Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma2ForCausalLM",
                "Gemma3ForCausalLM")


def sliding_window(hf: dict[str, Any]) -> int | None:
    """Qwen2 and Qwen3 carry a window they only use with use_sliding_window."""
    window = hf.get("sliding_window")
    if not window or hf.get("use_sliding_window") is False:
        return None
    return int(window)


def sliding_layers(architecture: str, hf: dict[str, Any]) -> tuple[bool, ...]:
    """By layer, whether it is a sliding-window layer; () when none is."""
    num_layers = int(hf["num_hidden_layers"])
    if architecture not in _LAYER_TYPED:
        return (True,) * num_layers if sliding_window(hf) is not None else ()
    layer_types = hf.get("layer_types") or _implied_layer_types(architecture, hf, num_layers)
    sliding = tuple(kind == "sliding_attention" for kind in layer_types)
    return sliding if any(sliding) else ()


def _implied_layer_types(architecture: str, hf: dict[str, Any],
                         num_layers: int) -> tuple[str, ...]:
    """Older configs without layer_types, as transformers fills them in."""
    def kinds(is_sliding) -> tuple[str, ...]:
        return tuple("sliding_attention" if is_sliding(index) else "full_attention"
                     for index in range(num_layers))

    if architecture == "Gemma2ForCausalLM":
        return kinds(lambda index: index % 2 == 0)
    if architecture == "Gemma3ForCausalLM":
        pattern = int(hf.get("sliding_window_pattern") or 6)
        return kinds(lambda index: (index + 1) % pattern != 0)
    first = int(hf.get("max_window_layers", 28))  # Qwen2, Qwen3
    return kinds(lambda index: sliding_window(hf) is not None and index >= first)
