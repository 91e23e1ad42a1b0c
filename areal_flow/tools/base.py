"""The tool interface: what a model may call during an episode, and what a call gives back.

Role: `Tool` is the base class of every tool (name, description, JSON-schema ``parameters``,
``async call(args) -> str``); `ToolCall` is one call found in generated text; `ToolResult` is
what goes back into the conversation.

Rules:
- The model's mistakes are results, never exceptions: arguments that break the schema, a
  `ToolError` raised by the tool, and a call that runs past ``timeout_s`` all come back as a
  `ToolResult` with ``ok=False`` and a message the model can read. Any other exception is a bug
  in the tool and propagates.
- Result text is capped at ``max_result_chars`` (the model's context is the scarce resource).
- A tool may also be called in plain text as ``<tag>body</tag>`` (models without tool support in
  their chat template): ``tag`` names the tag and ``tag_argument`` the argument the body fills.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import jsonschema


class ToolError(Exception):
    """A call the tool cannot serve (bad input, limit hit); its message goes to the model."""


@dataclass(frozen=True)
class ToolCall:
    """One tool call found in generated text.

    ``start``/``end`` delimit the call's text. ``error`` is set (and ``name`` or ``arguments``
    may be None) when the call could not be read; it is answered with that error.
    """

    name: str | None
    arguments: dict[str, Any] | None
    start: int
    end: int
    error: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What a call gave back: ``content`` goes into the conversation; ``ok`` is False on error."""

    name: str
    content: str
    ok: bool


class Tool(ABC):
    """A callable tool. Subclasses set the class attributes and implement `call`."""

    name: ClassVar[str]
    description: ClassVar[str]
    #: JSON schema of the arguments object (``{"type": "object", "properties": ...}``).
    parameters: ClassVar[dict[str, Any]]

    def __init__(
        self,
        *,
        tag: str | None = None,
        tag_argument: str | None = None,
        timeout_s: float = 30.0,
        max_result_chars: int = 2000,
    ) -> None:
        if (tag is None) != (tag_argument is None):
            raise ValueError(f"tool {self.name!r}: give both tag and tag_argument, or neither")
        if tag_argument is not None and tag_argument not in self.parameters.get("properties", {}):
            raise ValueError(f"tool {self.name!r}: tag_argument {tag_argument!r} is no parameter")
        self.tag = tag
        self.tag_argument = tag_argument
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars

    @abstractmethod
    async def call(self, args: dict[str, Any]) -> str:
        """Serve one call with schema-valid ``args``; raise `ToolError` for the model's errors."""

    def schema(self) -> dict[str, Any]:
        """The tool as chat templates take it (``apply_chat_template(..., tools=[...])``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    @cached_property
    def _validator(self) -> jsonschema.protocols.Validator:
        cls = jsonschema.validators.validator_for(self.parameters)
        cls.check_schema(self.parameters)  # a broken schema is the tool author's bug: raise
        return cls(self.parameters)

    async def invoke(self, args: dict[str, Any]) -> ToolResult:
        """Validate ``args``, run `call` under the timeout, and cap the text."""
        problem = jsonschema.exceptions.best_match(self._validator.iter_errors(args))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "arguments"
            return self.error(f"invalid {where}: {problem.message}")
        try:
            text = await asyncio.wait_for(self.call(args), self.timeout_s)
        except ToolError as e:
            return self.error(str(e))
        except asyncio.TimeoutError:
            return self.error(f"timed out after {self.timeout_s:g} s")
        return ToolResult(self.name, self._cap(text), ok=True)

    def error(self, message: str) -> ToolResult:
        return ToolResult(self.name, self._cap(f"error: {message}"), ok=False)

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_result_chars:
            return text
        cut = len(text) - self.max_result_chars
        return text[: self.max_result_chars] + f"\n[… {cut} more characters cut]"
