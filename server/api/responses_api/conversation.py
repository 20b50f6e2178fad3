"""Responses input items -> chat messages (the dicts ChatCompletionRequest takes), and a
ResponsesRequest -> the ChatCompletionRequest that the chat pipeline runs.

    {"role": r, "content": str | [input_text / output_text parts]}  -> a message of role r
    {"type": "function_call", call_id, name, arguments}            -> an assistant tool call
    {"type": "function_call_output", call_id, output}              -> a tool message
Consecutive function calls join one assistant turn, after that turn's text if it had any.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from server.api.errors import APIError, from_validation_errors, invalid_param
from server.api.protocol import ChatCompletionRequest
from server.api.responses_api.request import ResponsesRequest

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")
NOT_TEXT = {"input_image": "images", "input_file": "files", "input_audio": "audio"}


def input_messages(items: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid_param(f"input.{index}", "an input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, index))
        elif kind == "function_call":
            _add_call(messages, item, index)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", index),
                             "content": _output_text(item.get("output"), index)})
        else:
            raise invalid_param(f"input.{index}.type", f"input items of type {kind!r} are not "
                                                       "supported; send messages, function_call "
                                                       "and function_call_output items",
                                code="unsupported_input")
    return messages


def _message(item: dict[str, Any], index: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise invalid_param(f"input.{index}.role", f"role must be one of {', '.join(ROLES)}, "
                                                   f"got {role!r}")
    return {"role": role, "content": _content_text(item.get("content"), f"input.{index}")}


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_param(f"{param}.content", "content must be a string or a list of parts")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in NOT_TEXT:
            raise invalid_param(f"{param}.content.{i}", f"{NOT_TEXT[kind]} are not supported: "
                                                        f"this model takes text only",
                                code="unsupported_input")
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise invalid_param(f"{param}.content.{i}", f"content part type {kind!r} is not "
                                                        "supported; send input_text parts")
        texts.append(part["text"])
    return "".join(texts)


def _output_text(output: Any, index: int) -> str:
    if isinstance(output, str):
        return output
    return _content_text(output, f"input.{index}.output")


def _string(item: dict[str, Any], key: str, index: int) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise invalid_param(f"input.{index}.{key}", f"{key} must be a non-empty string")
    return value


def _add_call(messages: list[dict[str, Any]], item: dict[str, Any], index: int) -> None:
    call = {"id": _string(item, "call_id", index), "type": "function",
            "function": {"name": _string(item, "name", index),
                         "arguments": _string(item, "arguments", index)}}
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":
        last.setdefault("tool_calls", []).append(call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def chat_request(body: ResponsesRequest,
                 conversation: Sequence[dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request for this turn: the instructions, then the conversation (the stored
    one of previous_response_id, then this input)."""
    messages = list(conversation)
    if body.instructions:
        messages.insert(0, {"role": "developer", "content": body.instructions})
    if not messages:
        raise invalid_param("input", "input must not be empty")
    tools = [{"type": "function",
              "function": tool.model_dump(exclude_none=True, exclude={"type"})}
             for tool in body.function_tools()]
    chat: dict[str, Any] = {
        "model": body.model, "messages": messages, "stream": body.stream,
        "max_completion_tokens": body.max_output_tokens, "temperature": body.temperature,
        "top_p": body.top_p, "tools": tools or None, "tool_choice": body.chat_tool_choice(),
        "parallel_tool_calls": body.parallel_tool_calls, "user": body.user,
        "response_format": _response_format(body)}
    try:
        return ChatCompletionRequest.model_validate(
            {key: value for key, value in chat.items() if value is not None})
    except APIError as exc:
        raise responses_error(exc) from exc
    except ValidationError as exc:
        raise responses_error(from_validation_errors(exc.errors())) from exc


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name, "schema": fmt.json_schema, "strict": fmt.strict,
              "description": fmt.description}
    return {"type": "json_schema",
            "json_schema": {key: value for key, value in schema.items() if value is not None}}


# chat's parameter names -> the Responses API's, for errors the chat pipeline raises
_PARAMS = (("response_format.json_schema.schema", "text.format.schema"),
           ("response_format.json_schema", "text.format"), ("response_format", "text.format"),
           ("max_completion_tokens", "max_output_tokens"), ("max_tokens", "max_output_tokens"),
           ("messages", "input"))


def responses_error(error: APIError) -> APIError:
    """The error with the field it names spelled as the Responses API spells it."""
    param = error.param
    if param is None:
        return error
    if param.startswith("tools.") and ".function." in param:
        error.param = param.replace(".function.", ".", 1)
        return error
    for chat_name, name in _PARAMS:
        if param == chat_name or param.startswith(chat_name + "."):
            error.param = name + param[len(chat_name):]
            break
    return error
