"""The tools of an episode: find the calls in a turn, run them, render the results to insert.

Role: what a multi-turn episode needs between two generations. The model generates until a call
closes (`ToolSet.stop_strings`); `run_all` answers every call in that text; `insertion` is the
text to append before generating again — its tokens carry loss_mask 0, since the policy did not
sample them.

Two call styles:
- ``template``: the model's chat template knows tools (Hugging Face
  ``apply_chat_template(..., tools=...)``). The prompt is rendered with `schemas`; calls are the
  template's JSON form; results become ``tool`` messages rendered by the same template.
- ``plain``: the template knows no tools (SmolLM2). Each tool is called with its tag
  (``<calc>2+2</calc>``) and answered with a result block (``<result>4</result>``); the prompt's
  examples teach the format.

Rules:
- Every call gets exactly one result, in call order; an unreadable call, an unknown tool and a
  tool's own error are results with ``ok=False`` that the model reads.
- In template style the insertion is exactly what the template puts after the assistant's text:
  the end of the turn, the tool messages and the next generation prompt, minus what the model
  already generated itself (``generated_tail``, e.g. its end-of-turn token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from areal_flow.tools.base import Tool, ToolCall, ToolResult
from areal_flow.tools.parsing import JsonCallFormat, find_json_calls, find_tag_calls

CallStyle = Literal["template", "plain"]

# Stand-ins for conversation text when rendering template glue; nothing real contains them.
_USER_MARK = "⟦areal-user⟧"
_ASSISTANT_MARK = "⟦areal-assistant⟧"


class ToolSet:
    """Tools by name, in one call style."""

    def __init__(
        self,
        tools: Sequence[Tool],
        *,
        style: CallStyle = "template",
        call_format: JsonCallFormat | None = None,
        result_tag: str = "result",
    ) -> None:
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ValueError(f"tool names repeat: {[t.name for t in tools]}")
        self.style = style
        self.call_format = call_format or JsonCallFormat()
        self.result_tag = result_tag
        self.tags: dict[str, tuple[str, str]] = {}
        if style == "plain":
            for t in tools:
                if t.tag is None or t.tag_argument is None:
                    raise ValueError(f"plain style: tool {t.name!r} needs a tag (Tool(tag=...))")
                if t.tag in self.tags or t.tag == result_tag:
                    raise ValueError(f"plain style: tag {t.tag!r} is used twice")
                self.tags[t.tag] = (t.name, t.tag_argument)

    def schemas(self) -> list[dict[str, Any]]:
        """The ``tools=`` argument of ``apply_chat_template``."""
        return [t.schema() for t in self.tools.values()]

    def tail(self, text: str) -> str:
        """What a turn generated after its last call closed (``generated_tail``)."""
        ends = [text.rfind(stop) + len(stop) for stop in self.stop_strings() if stop in text]
        return text[max(ends) :] if ends else ""

    def stop_strings(self) -> list[str]:
        """Strings that end a call: stop generating there, run the call, insert its result."""
        if self.style == "template":
            return [self.call_format.close]
        return [f"</{tag}>" for tag in self.tags]

    def parse(self, text: str) -> list[ToolCall]:
        if self.style == "template":
            return find_json_calls(text, self.call_format)
        return find_tag_calls(text, self.tags)

    async def run(self, call: ToolCall) -> ToolResult:
        """One call's result; the model's mistakes come back as ``ok=False`` results."""
        name = call.name or "unknown"
        if call.error is not None:
            return ToolResult(name, f"error: {call.error}", ok=False)
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self.tools))
            return ToolResult(name, f"error: no tool named {name!r} (tools: {known})", ok=False)
        assert call.arguments is not None  # a readable call has arguments
        return await tool.invoke(call.arguments)

    async def run_all(self, text: str) -> list[ToolResult]:
        """Results of every call in ``text``, in call order (the calls run concurrently)."""
        return list(await asyncio.gather(*(self.run(c) for c in self.parse(text))))

    def insertion(
        self, results: Sequence[ToolResult], tokenizer: Any = None, generated_tail: str = ""
    ) -> str:
        """The text to append after the model's turn so it can continue with the results.

        Plain style: result blocks, minus what the model already generated of them: a token
        can run past the call's closing tag (SmolLM2 has one token for ``><``, so a turn stopped
        at ``</calc>`` may end in ``</calc><``). Template style (``tokenizer`` needed): see the
        module rules.
        """
        if self.style == "plain":
            blocks = "".join(f"<{self.result_tag}>{r.content}</{self.result_tag}>" for r in results)
            return blocks.removeprefix(generated_tail)
        if tokenizer is None:
            raise ValueError("template style: insertion needs the model's tokenizer")
        return template_insertion(tokenizer, results, self.schemas(), generated_tail)

    def insertion_ids(
        self, results: Sequence[ToolResult], tokenizer: Any, generated_tail: str = ""
    ) -> list[int]:
        """`insertion` as token ids (special tokens such as ``<|im_end|>`` included)."""
        text = self.insertion(results, tokenizer, generated_tail)
        return list(tokenizer.encode(text, add_special_tokens=False))


def tool_messages(results: Sequence[ToolResult]) -> list[dict[str, str]]:
    """Results as chat messages of role ``tool``."""
    return [{"role": "tool", "name": r.name, "content": r.content} for r in results]


def template_insertion(
    tokenizer: Any,
    results: Sequence[ToolResult],
    tools: list[dict[str, Any]] | None = None,
    generated_tail: str = "",
) -> str:
    """What ``tokenizer``'s chat template puts between an assistant's text and the next turn.

    Rendered from a stand-in conversation, so it never depends on (or re-tokenizes) the real
    one. ``generated_tail`` is the text the model generated after its call, which the template
    also emits (its end-of-turn token); it is removed from the front of the insertion.
    """
    base = [
        {"role": "user", "content": _USER_MARK},
        {"role": "assistant", "content": _ASSISTANT_MARK},
    ]
    text = tokenizer.apply_chat_template(
        base + tool_messages(results), tools=tools, tokenize=False, add_generation_prompt=True
    )
    at = text.find(_ASSISTANT_MARK)
    if at < 0:
        raise ValueError("the chat template dropped the assistant's text; cannot place results")
    glue = text[at + len(_ASSISTANT_MARK) :]
    missing = [r.content for r in results if r.content not in glue]
    if missing:
        raise ValueError(f"the chat template does not render tool messages (lost {missing[0]!r})")
    if not glue.startswith(generated_tail):
        raise ValueError(
            f"the model's turn ended with {generated_tail!r} but its chat template continues "
            f"with {glue[:40]!r}; pass the text the model generated after its call"
        )
    return glue[len(generated_tail) :]


def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders tool schemas (else use the plain style)."""
    probe = {
        "type": "function",
        "function": {
            "name": "areal_probe_tool",
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    if getattr(tokenizer, "chat_template", None) is None:
        return False
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[probe], tokenize=False
    )
    return "areal_probe_tool" in text
