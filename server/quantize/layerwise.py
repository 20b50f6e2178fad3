"""The model run one decoder layer at a time over the calibration blocks, with each layer's
linear inputs observed on the way: what every calibrated method builds on.

The model is transformers' own implementation in float32, so the calibration computes what
the checkpoint means, independently of the engine. The hidden states entering layer 0 (and
the arguments the model hands every layer: rotary tables, mask, positions) are captured
once; each layer then maps the blocks' hidden states to the next layer's, so only one
layer's activations are alive at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from server.quantize.options import QuantizeError

# the modules a Llama-style decoder layer must have, by the names transformers gives them
LAYER_MODULES = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj",
                 "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")


class _Stop(Exception):
    """Raised by the hook on layer 0 once it has its inputs."""


@dataclass
class LayerInputs:
    hidden: list[torch.Tensor]  # per block: [1, tokens, hidden]
    kwargs: list[dict]  # per block: the other arguments the model passes each layer


def check_architecture(hf_config: dict) -> None:
    architectures = hf_config.get("architectures") or ["(none)"]
    if architectures[0] not in SUPPORTED_ARCHITECTURES:
        raise QuantizeError(f"inflightd quantize handles Llama-style decoders "
                            f"({', '.join(SUPPORTED_ARCHITECTURES)}); {architectures[0]} is "
                            "not one of them")


def load_model(weights_dir: Path, device: torch.device):
    """transformers' model of the checkpoint, in float32 on `device`, for inference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=torch.float32)
    model.to(device).eval()
    for layer in decoder_layers(model):
        missing = [name for name in LAYER_MODULES if _find(layer, name) is None]
        if missing:
            raise QuantizeError(f"the model's decoder layers lack {missing}: not a Llama-style "
                                "layer")
    return model


def decoder_layers(model) -> list[torch.nn.Module]:
    return list(model.model.layers)


def module(layer: torch.nn.Module, name: str) -> torch.nn.Module:
    """A layer's submodule by its dotted name (self_attn.q_proj)."""
    found = _find(layer, name)
    if found is None:
        raise QuantizeError(f"decoder layer has no {name}")
    return found


def _find(layer: torch.nn.Module, name: str) -> torch.nn.Module | None:
    for part in name.split("."):
        layer = getattr(layer, part, None)
        if layer is None:
            return None
    return layer


@torch.no_grad()
def first_layer_inputs(model, blocks: list[torch.Tensor]) -> LayerInputs:
    """What layer 0 receives for each block (the model stops there)."""
    inputs = LayerInputs(hidden=[], kwargs=[])

    def capture(_module, args, kwargs):
        inputs.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        inputs.kwargs.append({key: value for key, value in kwargs.items()
                              if key != "hidden_states"})
        raise _Stop

    device = next(model.parameters()).device
    handle = decoder_layers(model)[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for block in blocks:
            try:
                model.model(input_ids=block.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return inputs


@torch.no_grad()
def run_layer(layer: torch.nn.Module, inputs: LayerInputs) -> list[torch.Tensor]:
    """The layer's output hidden states for each block."""
    outputs = []
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        out = layer(hidden, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@contextmanager
def observe_inputs(layer: torch.nn.Module, names: tuple[str, ...],
                   observe: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Calls observe(name, x [tokens, in]) with the input of each named linear module of
    `layer` every time it runs, while the context lasts."""
    handles = []
    for name in names:
        def hook(_module, args, name=name):
            x = args[0]
            observe(name, x.reshape(-1, x.shape[-1]).float())
        handles.append(module(layer, name).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def calibrate_layers(model, blocks: list[torch.Tensor], step, *, desc: str) -> None:
    """Runs `step(index, layer, inputs) -> outputs | None` on each decoder layer in turn:
    it observes and changes the layer, and may return the blocks' outputs it computed on
    the way (else the layer is run again to get them)."""
    from tqdm import tqdm

    inputs = first_layer_inputs(model, blocks)
    for index, layer in enumerate(tqdm(decoder_layers(model), desc=desc, unit="layer")):
        outputs = step(index, layer, inputs)
        inputs.hidden = outputs if outputs is not None else run_layer(layer, inputs)
