"""ToolSet: calls found, run and answered in both styles; results rendered for insertion exactly
as the chat template would render the same conversation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

from areal_flow.tools import (
    Calculator,
    PythonTool,
    SandboxLimits,
    Tool,
    ToolError,
    ToolResult,
    ToolSet,
    template_supports_tools,
)

QWEN_TEMPLATE = (Path(__file__).parent / "data" / "qwen2_5_tool_template.jinja").read_text()


class Echo(Tool):
    """A test tool: echoes its text, refuses "bad", hangs on "hang"."""

    name: ClassVar[str] = "echo"
    description: ClassVar[str] = "Echo the text."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    }

    async def call(self, args: dict[str, Any]) -> str:
        if args["text"] == "bad":
            raise ToolError("bad input")
        if args["text"] == "hang":
            await asyncio.Event().wait()
        return args["text"] * 3


@pytest.fixture(scope="module")
def qwen_tokenizer(smollm2_dir: Path) -> Any:
    """SmolLM2's tokenizer (ChatML special tokens, like Qwen's) with Qwen2.5's tool template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert not template_supports_tools(tokenizer)  # SmolLM2's own template ignores tools
    tokenizer.chat_template = QWEN_TEMPLATE
    assert template_supports_tools(tokenizer)
    return tokenizer


def test_plain_style_runs_every_call_in_order() -> None:
    tools = ToolSet([Calculator(), Echo(tag="echo", tag_argument="text")], style="plain")
    text = "a <calc>2 + 3</calc> b <echo>ab</echo> c <calc>1/0</calc> <echo>bad</echo> <calc>4*"
    results = asyncio.run(tools.run_all(text))
    assert [(r.name, r.content, r.ok) for r in results] == [
        ("calculator", "5", True),
        ("echo", "ababab", True),
        ("calculator", "error: division by zero", False),
        ("echo", "error: bad input", False),
        ("calculator", "error: the call <calc>… was never closed with </calc>", False),
    ]
    assert tools.stop_strings() == ["</calc>", "</echo>"]
    assert tools.insertion(results[:2]) == "<result>5</result><result>ababab</result>"


def test_plain_style_needs_tags() -> None:
    with pytest.raises(ValueError, match="needs a tag"):
        ToolSet([Echo()], style="plain")
    with pytest.raises(ValueError, match="used twice"):
        ToolSet([Calculator(tag="result")], style="plain")
    with pytest.raises(ValueError, match="repeat"):
        ToolSet([Calculator(), Calculator()])
    with pytest.raises(ValueError, match="no parameter"):
        Echo(tag="echo", tag_argument="missing")


def test_template_style_answers_unknown_tools_and_timeouts() -> None:
    tools = ToolSet([Echo(timeout_s=0.2)])
    text = (
        '<tool_call>{"name": "echo", "arguments": {"text": "hi"}}</tool_call>'
        '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>'
        '<tool_call>{"name": "echo", "arguments": {"text": "hang"}}</tool_call>'
        '<tool_call>{"name": "echo", "arguments": {"txt": "x"}}</tool_call>'
    )
    results = asyncio.run(tools.run_all(text))
    assert results[0] == ToolResult("echo", "hihihi", True)
    assert results[1] == ToolResult("search", "error: no tool named 'search' (tools: echo)", False)
    assert results[2] == ToolResult("echo", "error: timed out after 0.2 s", False)
    assert not results[3].ok and "'text' is a required property" in results[3].content
    assert tools.stop_strings() == ["</tool_call>"]


def test_long_results_are_capped() -> None:
    result = asyncio.run(Echo(max_result_chars=10).invoke({"text": "abcdef"}))
    assert result.content == "abcdefabcd\n[… 8 more characters cut]"


def test_template_round_trip_matches_the_chat_template(qwen_tokenizer: Any) -> None:
    """prompt + generated call + insertion == the template's rendering of the whole exchange."""
    tools = ToolSet([Calculator(), PythonTool()])
    user = [{"role": "user", "content": "What is 2+3?"}]
    prompt = qwen_tokenizer.apply_chat_template(
        user, tools=tools.schemas(), tokenize=False, add_generation_prompt=True
    )
    assert '"name": "calculator"' in prompt and '"name": "python"' in prompt
    call = {"name": "calculator", "arguments": {"expression": "2+3"}}
    generated = f"<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>"
    results = asyncio.run(tools.run_all(generated))
    assert results == [ToolResult("calculator", "5", True)]
    insertion = tools.insertion(results, qwen_tokenizer, generated_tail="<|im_end|>")
    whole = qwen_tokenizer.apply_chat_template(
        [
            *user,
            {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
            {"role": "tool", "name": "calculator", "content": "5"},
        ],
        tools=tools.schemas(),
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt + generated + insertion == whole
    ids = tools.insertion_ids(results, qwen_tokenizer, generated_tail="<|im_end|>")
    assert qwen_tokenizer.decode(ids) == insertion
    specials = qwen_tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert all(s in ids for s in specials)  # glue tokens are single special tokens


def test_template_insertion_after_a_stop_string(qwen_tokenizer: Any) -> None:
    """Generation stopped at </tool_call> (no end-of-turn yet): the insertion closes the turn."""
    tools = ToolSet([Calculator()])
    results = [ToolResult("calculator", "5", True), ToolResult("calculator", "7", True)]
    insertion = tools.insertion(results, qwen_tokenizer)
    assert insertion == (
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n"
        "<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match="continues with"):
        tools.insertion(results, qwen_tokenizer, generated_tail="</s>")
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        tools.insertion(results)


def test_template_without_tool_messages_is_refused(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role != 'tool' %}{{ m.content }}{% endif %}{% endfor %}"
    )
    with pytest.raises(ValueError, match="does not render tool messages"):
        ToolSet([Calculator()]).insertion([ToolResult("calculator", "5", True)], tokenizer)


@pytest.mark.usefixtures("sandbox_isolation")
def test_python_tool_in_plain_style() -> None:
    tools = ToolSet([PythonTool(SandboxLimits(cpu_s=1, wall_s=5))], style="plain")
    text = (
        "<python>print(sum(range(10)))</python>"
        "<python>import sys\nprint('partial')\nsys.exit('boom')</python>"
        "<python>while True: pass</python>"
        "<python></python>"
    )
    results = asyncio.run(tools.run_all(text))  # four sandboxes at once
    assert [r.content for r in results] == [
        "45",
        "partial\n[stderr]\nboom\n[exit status 1]",
        "[stopped: CPU time limit reached]",
        "[no output]",
    ]
    assert all(r.ok for r in results)  # a failing program is an answer, not a tool error
