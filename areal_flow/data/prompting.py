"""How a question becomes the model's prompt: system message, example exchanges, instruction,
chat template. One rendering for training (the prompt source) and evaluation, so a policy is
scored on exactly the prompts it was trained on.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from areal_flow.data.problem import ANSWER_INSTRUCTION
from areal_flow.spec import Spec


class Exchange(Spec):
    """One example turn shown to the model before the question (few-shot)."""

    user: str = Field(min_length=1, description="The example's user message.")
    assistant: str = Field(min_length=1, description="The answer the model should imitate.")


class PromptFormat(Spec):
    """How a question becomes the model's prompt."""

    system: str | None = Field(None, description="A system message; null = none.")
    examples: list[Exchange] = Field(
        default_factory=list,
        description="Example exchanges put before the question as earlier turns of the "
        "conversation (they teach a format or a tool call better than a description).",
    )
    instruction: str = Field(
        ANSWER_INSTRUCTION,
        description="Appended to each question on its own line ('' = nothing); the default asks "
        "for the format the math verifier checks.",
    )
    chat_template: bool = Field(
        True,
        description="Render with the tokenizer's chat template (and a generation prompt); false "
        "feeds the plain text (system, question, instruction) to the model as is.",
    )


def render_prompt(tokenizer: Any, question: str, fmt: PromptFormat) -> tuple[str, list[int]]:
    """The prompt text and its token ids for ``question``."""
    from areal_flow.data.problem import prompt_text

    user = prompt_text(question, fmt.instruction)
    turns = [(e.user, e.assistant) for e in fmt.examples]
    if fmt.chat_template:
        messages = [{"role": "system", "content": fmt.system}] if fmt.system else []
        for asked, answered in turns:
            messages += [
                {"role": "user", "content": asked},
                {"role": "assistant", "content": answered},
            ]
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        parts = [fmt.system] if fmt.system else []
        parts += [f"{asked}\n{answered}" for asked, answered in turns]
        text = "\n\n".join([*parts, user])
    return text, tokenizer(text, add_special_tokens=False)["input_ids"]
