"""Find tool calls in generated text: the chat-template JSON form and the plain tag form.

Role: pure text processing for `ToolSet.parse`; no tool is looked up or run here.

Rules:
- JSON form, as chat templates with tool support ask for it (Hermes, Qwen 2.5/3):
  ``<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>``. The
  markers are configurable (`JsonCallFormat`); ``parameters`` (Llama 3) is read as
  ``arguments``, and arguments given as a JSON string (OpenAI style) are decoded.
- Tag form, for models without tool support in their template: ``<calc>2+2</calc>``; each tag
  maps to a tool and the argument its (stripped) body fills.
- A call that cannot be read is returned with ``error`` set, never raised: a body that is not a
  JSON object or lacks a name, a call opened but never closed (generation hit its length limit),
  a body longer than ``MAX_CALL_CHARS``.
- Scans are linear (``str.find``), so adversarial text costs one pass per marker.
- Calls come back in the order they appear in the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from areal_flow.tools.base import ToolCall

MAX_CALL_CHARS: Final = 16384


@dataclass(frozen=True)
class JsonCallFormat:
    """The markers around a JSON tool call in the chat template's format."""

    open: str = "<tool_call>"
    close: str = "</tool_call>"


def find_json_calls(text: str, fmt: JsonCallFormat | None = None) -> list[ToolCall]:
    """Every ``open{json}close`` call in ``text``."""
    fmt = fmt or JsonCallFormat()
    calls = []
    for start, body, end, problem in _spans(text, fmt.open, fmt.close):
        if problem is not None:
            calls.append(ToolCall(None, None, start, end, problem))
        else:
            calls.append(_json_call(body, start, end))
    return calls


def find_tag_calls(text: str, tags: Mapping[str, tuple[str, str]]) -> list[ToolCall]:
    """Every ``<tag>body</tag>`` call; ``tags`` maps a tag to (tool name, argument name)."""
    calls = []
    for tag, (name, argument) in tags.items():
        for start, body, end, problem in _spans(text, f"<{tag}>", f"</{tag}>"):
            if problem is not None:
                calls.append(ToolCall(name, None, start, end, problem))
            else:
                calls.append(ToolCall(name, {argument: body.strip()}, start, end))
    return sorted(calls, key=lambda c: c.start)


def _spans(text: str, open_: str, close: str) -> Iterator[tuple[int, str, int, str | None]]:
    """(start, body, end, problem) of each marked span, left to right."""
    pos = 0
    while (start := text.find(open_, pos)) >= 0:
        body_start = start + len(open_)
        stop = text.find(close, body_start)
        if stop < 0:
            yield start, "", len(text), f"the call {open_}… was never closed with {close}"
            return
        end = stop + len(close)
        if stop - body_start > MAX_CALL_CHARS:
            yield start, "", end, f"the call is longer than {MAX_CALL_CHARS} characters"
        else:
            yield start, text[body_start:stop], end, None
        pos = end


def _json_call(body: str, start: int, end: int) -> ToolCall:
    def bad(problem: str, name: str | None = None) -> ToolCall:
        return ToolCall(name, None, start, end, problem)

    try:
        obj: Any = json.loads(body)
    except json.JSONDecodeError as e:
        return bad(f"the call is not valid JSON ({e.msg} at character {e.pos})")
    if not isinstance(obj, dict):
        return bad('the call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return bad('the call has no "name"')
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            return bad(f'"arguments" is a string but not JSON ({e.msg})', name)
    if not isinstance(arguments, dict):
        return bad('"arguments" must be a JSON object', name)
    return ToolCall(name, arguments, start, end)
