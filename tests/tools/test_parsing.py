"""Tool calls in generated text: the chat-template JSON form, the plain tag form, and every
malformed call read as an error instead of raised."""

from __future__ import annotations

import json

from areal_flow.tools import JsonCallFormat, ToolCall, find_json_calls, find_tag_calls
from areal_flow.tools.parsing import MAX_CALL_CHARS


def json_call(name: str, arguments: object, key: str = "arguments") -> str:
    return f"<tool_call>\n{json.dumps({'name': name, key: arguments})}\n</tool_call>"


def test_json_calls_in_order_with_spans() -> None:
    first = json_call("calculator", {"expression": "2+3"})
    second = json_call("python", {"code": "print(1)"})
    text = f"Let me compute. {first} and {second} done"
    calls = find_json_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculator", {"expression": "2+3"}, None),
        ("python", {"code": "print(1)"}, None),
    ]
    assert text[calls[0].start : calls[0].end] == first
    assert text[calls[1].start : calls[1].end] == second


def test_json_call_variants() -> None:
    llama = find_json_calls(json_call("calculator", {"expression": "1"}, key="parameters"))
    assert llama[0].arguments == {"expression": "1"}
    openai = find_json_calls(json_call("calculator", json.dumps({"expression": "1"})))
    assert openai[0].arguments == {"expression": "1"}
    no_args = find_json_calls('<tool_call>{"name": "clock"}</tool_call>')
    assert (no_args[0].name, no_args[0].arguments) == ("clock", {})
    custom = JsonCallFormat(open="[CALL]", close="[/CALL]")
    found = find_json_calls('[CALL]{"name": "x", "arguments": {}}[/CALL]', custom)
    assert found[0].name == "x" and found[0].error is None


def error_of(text: str) -> str:
    (call,) = find_json_calls(text)
    assert call.arguments is None and call.error is not None
    return call.error


def test_malformed_json_calls_are_errors() -> None:
    assert "not valid JSON" in error_of("<tool_call>{name: calculator}</tool_call>")
    assert "must be a JSON object" in error_of("<tool_call>[1, 2]</tool_call>")
    assert 'no "name"' in error_of('<tool_call>{"arguments": {}}</tool_call>')
    assert '"arguments" must be a JSON object' in error_of(
        '<tool_call>{"name": "x", "arguments": [1]}</tool_call>'
    )
    assert "string but not JSON" in error_of(
        '<tool_call>{"name": "x", "arguments": "{oops"}</tool_call>'
    )
    assert "never closed" in error_of('text <tool_call>{"name": "calculator", "argu')
    long_body = '{"name": "x", "arguments": {"a": "' + "y" * MAX_CALL_CHARS + '"}}'
    assert "longer than" in error_of(f"<tool_call>{long_body}</tool_call>")


def test_unclosed_call_spans_to_the_end() -> None:
    text = 'ok <tool_call>{"name": "x"'
    (call,) = find_json_calls(text)
    assert (call.start, call.end) == (3, len(text))


def test_tag_calls() -> None:
    tags = {"calc": ("calculator", "expression"), "python": ("python", "code")}
    text = "So <calc> 12 * 4 </calc> then <python>print(2)</python>, and <calc>1+1</calc>."
    calls = find_tag_calls(text, tags)
    assert [(c.name, c.arguments) for c in calls] == [
        ("calculator", {"expression": "12 * 4"}),
        ("python", {"code": "print(2)"}),
        ("calculator", {"expression": "1+1"}),
    ]
    assert text[calls[0].start : calls[0].end] == "<calc> 12 * 4 </calc>"


def test_malformed_tag_calls_are_errors() -> None:
    tags = {"calc": ("calculator", "expression")}
    (unclosed,) = find_tag_calls("The answer is <calc>3 +", tags)
    assert unclosed == ToolCall("calculator", None, 14, 23, unclosed.error)
    assert unclosed.error is not None and "never closed" in unclosed.error
    assert find_tag_calls("no calls here, only </calc> and <calculator>", tags) == []


def test_many_open_markers_cost_one_pass() -> None:
    # A backtracking regex would rescan to the end from every marker (quadratic: minutes here).
    text = "<tool_call>" * 200_000
    calls = find_json_calls(text)
    assert len(calls) == 1 and calls[0].error is not None
