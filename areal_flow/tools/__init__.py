"""Tools a model may call during an episode, and the sandbox that runs untrusted code.

- `base`: the `Tool` interface, `ToolCall`, `ToolResult`, `ToolError`.
- `calculator`: safe arithmetic (`Calculator`, `evaluate`), no ``eval``.
- `parsing`: tool calls in generated text (chat-template JSON form, plain tag form).
- `toolset`: `ToolSet`, parse + run + render results for insertion into the conversation.
- `sandbox`: `run_python`, a separate process with limits, no network, no writes outside its
  scratch folder; `jail` is its child side (a script, not imported).
- `python_tool`: `PythonTool`, the sandbox as a tool.
"""

from areal_flow.tools.base import Tool, ToolCall, ToolError, ToolResult
from areal_flow.tools.calculator import Calculator, evaluate
from areal_flow.tools.parsing import JsonCallFormat, find_json_calls, find_tag_calls
from areal_flow.tools.python_tool import PythonTool
from areal_flow.tools.sandbox import (
    SandboxError,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    check_sandbox,
    run_python,
    run_python_sync,
)
from areal_flow.tools.toolset import (
    ToolSet,
    template_insertion,
    template_supports_tools,
    tool_messages,
)

__all__ = [
    "Calculator",
    "JsonCallFormat",
    "PythonTool",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "ToolSet",
    "check_sandbox",
    "evaluate",
    "find_json_calls",
    "find_tag_calls",
    "run_python",
    "run_python_sync",
    "template_insertion",
    "template_supports_tools",
    "tool_messages",
]
