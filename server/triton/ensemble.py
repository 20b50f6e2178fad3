"""The model as Triton clients see it: TensorRT-LLM's `ensemble` inputs and outputs, and the
metadata and config documents built from them (shared by HTTP and gRPC)."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_VERSION = "1"
SERVER_NAME = "inflightd"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_configuration", "binary_tensor_data", "generate", "parameters")


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its datatype, its dims after the batch dimension, and how its
    values are read ("text", "int", "float", "bool")."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = True

    @property
    def kind(self) -> str:
        if self.datatype == "BYTES":
            return "text"
        if self.datatype == "BOOL":
            return "bool"
        return "float" if self.datatype.startswith("FP") else "int"

    @property
    def is_list(self) -> bool:
        return self.dims == (-1,)


def _spec(name: str, datatype: str, dims: tuple[int, ...] = (1,), *,
          optional: bool = True) -> TensorSpec:
    return TensorSpec(name, datatype, dims, optional)


INPUTS: tuple[TensorSpec, ...] = (
    _spec("text_input", "BYTES", optional=False),
    _spec("max_tokens", "INT32", optional=False),
    _spec("bad_words", "BYTES", (-1,)),
    _spec("stop_words", "BYTES", (-1,)),
    _spec("exclude_input_in_output", "BOOL"),
    _spec("end_id", "INT32"),
    _spec("pad_id", "INT32"),
    _spec("top_k", "INT32"),
    _spec("top_p", "FP32"),
    _spec("temperature", "FP32"),
    _spec("length_penalty", "FP32"),
    _spec("repetition_penalty", "FP32"),
    _spec("min_length", "INT32"),
    _spec("min_tokens", "INT32"),
    _spec("presence_penalty", "FP32"),
    _spec("frequency_penalty", "FP32"),
    _spec("random_seed", "UINT64"),
    _spec("seed", "UINT64"),
    _spec("return_log_probs", "BOOL"),
    _spec("return_context_logits", "BOOL"),
    _spec("return_generation_logits", "BOOL"),
    _spec("return_perf_metrics", "BOOL"),
    _spec("return_num_input_tokens", "BOOL"),
    _spec("return_num_output_tokens", "BOOL"),
    _spec("beam_width", "INT32"),
    _spec("num_return_sequences", "INT32"),
    _spec("stream", "BOOL"),
    _spec("embedding_bias_words", "BYTES", (-1,)),
    _spec("embedding_bias_weights", "FP32", (-1,)),
    _spec("guided_decoding_guide_type", "BYTES"),
    _spec("guided_decoding_guide", "BYTES"),
)
INPUTS_BY_NAME = {spec.name: spec for spec in INPUTS}

# Inputs the ensemble documents that this engine has no counterpart for (a clear 400).
UNSUPPORTED_INPUTS = frozenset({
    "decoder_text_input", "image_input", "prompt_embedding_table", "prompt_table_extra_id",
    "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config"})

OUTPUTS: tuple[TensorSpec, ...] = (
    _spec("text_output", "BYTES", (-1,)),
    _spec("cum_log_probs", "FP32", (-1,)),
    _spec("output_log_probs", "FP32", (-1, -1)),
    _spec("num_input_tokens", "INT32"),
    _spec("num_output_tokens", "INT32"),
    _spec("batch_index", "INT32"),
)
OUTPUTS_BY_NAME = {spec.name: spec for spec in OUTPUTS}


def server_metadata() -> dict:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def repository_index(names: tuple[str, ...], *, ready: bool) -> list[dict]:
    """Every served name as a model of the repository, in Triton's index form."""
    state = "READY" if ready else "UNAVAILABLE"
    return [{"name": name, "version": MODEL_VERSION, "state": state} for name in names]


def model_metadata(name: str) -> dict:
    """KServe v2 model metadata; shapes lead with the batch dimension (-1)."""
    def tensor(spec: TensorSpec) -> dict:
        return {"name": spec.name, "datatype": spec.datatype, "shape": [-1, *spec.dims]}

    return {"name": name, "versions": [MODEL_VERSION], "platform": "ensemble",
            "inputs": [tensor(s) for s in INPUTS], "outputs": [tensor(s) for s in OUTPUTS]}


def model_config(name: str, *, max_batch_size: int) -> dict:
    """Triton's model configuration, as its JSON form names the fields: enough for clients
    that read the inputs, the batch size and whether the model streams (decoupled)."""
    def tensor(spec: TensorSpec) -> dict:
        return {"name": spec.name, "data_type": _config_type(spec.datatype),
                "dims": list(spec.dims)}

    inputs = [tensor(s) | ({"optional": True} if s.optional else {}) for s in INPUTS]
    return {"name": name, "platform": "ensemble", "backend": "",
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": max_batch_size,
            "input": inputs, "output": [tensor(s) for s in OUTPUTS],
            "model_transaction_policy": {"decoupled": True},
            "parameters": {"engine": {"string_value": SERVER_NAME}}}


def _config_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
