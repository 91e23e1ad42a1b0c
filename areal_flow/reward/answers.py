"""Find the final answer in a model response, and normalise it for comparison.

Role: pure text processing, no math library, no processes. The verifier pool runs it inside its
workers; `areal-flow eval` and tests may call it directly.

Rules:
- Strict markers: ``\\boxed{...}``, "The answer is X" (also "The final answer is X") and a
  GSM8K-style ``#### X`` line. When several are present, the one that starts last in the text
  wins: the final statement is the final answer.
- ``ends_response``: the answer is the response's last word when only whitespace, full stops and
  closing decoration (``**``, ``$``, brackets) follow it; prompts that say "End with 'The answer
  is N.'" ask for that.
- Lenient mode adds one fallback, used only when no strict marker is present: the last number in
  the text.
- Every scan is linear in the text length and every captured span is bounded, so adversarial
  text (megabytes, unbalanced braces) costs at most a linear pass. Callers cap the text length.
- Nothing here evaluates text; spans are returned as strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

AnswerSource = Literal["boxed", "answer_is", "hashes", "last_number"]
RequiredFormat = Literal["answer_is", "boxed", "hashes", "any"]

#: Longest span a marker may capture; longer spans are reported as ``too_long``.
SPAN_LIMIT: Final = 256

_ANSWER_IS: Final = re.compile(r"the\s+(?:final\s+)?answer\s+is\b\s*:?[ \t]*", re.IGNORECASE)
_HASHES: Final = re.compile(r"^[ \t]*####[ \t]*", re.MULTILINE)
_BOXED: Final = re.compile(r"\\boxed\s*\{")
# Digits with optional thousands separators, optional sign and decimals; the lookarounds keep
# "x2" or "3rd" pieces from reading as numbers only where that matters (digits glued to words
# are still numbers: "5kg").
_NUMBER_IN_TEXT: Final = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_PLAIN_NUMBER: Final = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
# A number at the start of a span followed by words: "18 dollars", "$18 per day", "7 apples".
_LEADING_NUMBER_WITH_UNITS: Final = re.compile(
    r"\\?\$?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*(?:%|[A-Za-z][A-Za-z .'/-]*)?"
)
# A sentence ends at "." or "!" before whitespace; "3.5" and "10!" (factorial mid-span) survive.
_SENTENCE_END: Final = re.compile(r"[.!](?=\s|$)")
# What may follow an answer that ends its response: whitespace, full stops, closing decoration.
_TRAILER: Final = re.compile(r"[\s.!*$)\]}]*")
_UNICODE_MINUS: Final = str.maketrans({"−": "-", "–": "-", "—": "-"})


@dataclass(frozen=True)
class Extraction:
    """A candidate final answer found in a response.

    ``problem`` is None for a clean span, ``"too_long"`` when the span exceeded ``SPAN_LIMIT``
    characters, ``"unbalanced"`` for a ``\\boxed{`` whose braces never close. ``start`` is where
    the marker begins; ``end`` is just past the answer: its sentence's full stop, the closing
    brace, the end of the ``####`` line or of the number.
    """

    text: str
    source: AnswerSource
    start: int
    end: int
    problem: Literal["too_long", "unbalanced"] | None = None


def extract_answer(text: str, *, lenient: bool = False) -> Extraction | None:
    """The final answer of ``text``: the last strict marker, else (lenient) the last number."""
    candidates = [
        c for c in (_last_boxed(text), _last_answer_is(text), _last_hashes(text)) if c is not None
    ]
    if candidates:
        return max(candidates, key=lambda c: c.start)
    return _last_number(text) if lenient else None


def ends_response(text: str, found: Extraction) -> bool:
    """Whether nothing but whitespace, full stops and closing decoration follows the answer."""
    return _TRAILER.fullmatch(text, found.end) is not None


def follows_format(text: str, required: RequiredFormat) -> bool:
    """Whether ``text`` states an answer in the ``required`` format (clean, non-empty span)."""
    finders = {"boxed": _last_boxed, "answer_is": _last_answer_is, "hashes": _last_hashes}
    names = list(finders) if required == "any" else [required]
    for name in names:
        found = finders[name](text)
        if found is not None and found.problem is None and clean_span(found.text):
            return True
    return False


def clean_span(span: str) -> str:
    """Strip the decoration around an answer span: math delimiters, bold, trailing punctuation.

    An equation keeps its right-hand side ("x = 8" → "8"): the stated value is the answer.
    """
    s = span.translate(_UNICODE_MINUS).strip()
    for _ in range(3):  # decorations nest at most a few deep ("**$8$**.")
        s = s.strip().rstrip(".;,").strip()
        s = _strip_pair(s, "**", "**")
        s = _strip_pair(s, "$", "$")
        s = _strip_pair(s, "\\(", "\\)")
        s = _strip_pair(s, "\\[", "\\]")
    if "=" in s and "\\" not in s:
        s = s.rsplit("=", 1)[1].strip()
    return s


def plain_number(span: str) -> str | None:
    """``span`` as a canonical decimal string when it is a plain number (units allowed), else None.

    "1,080" → "1080", "$18 dollars" → "18", "-3.50" → "-3.50". Grouping commas must be
    well-formed, so "1,2" is not twelve.
    """
    s = span.strip()
    if _PLAIN_NUMBER.fullmatch(s):
        return s.replace(",", "")
    m = _LEADING_NUMBER_WITH_UNITS.fullmatch(s)
    if m is None:
        return None
    return m.group(1).replace(",", "")


def _strip_pair(s: str, left: str, right: str) -> str:
    if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
        return s[len(left) : len(s) - len(right)].strip()
    return s


def _last_answer_is(text: str) -> Extraction | None:
    last = None
    for last in _ANSWER_IS.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    end_of_line = text.find("\n", last.end())
    stop = len(text) if end_of_line < 0 else end_of_line
    window = text[last.end() : min(stop, last.end() + SPAN_LIMIT + 1)]
    sentence_end = _SENTENCE_END.search(window)
    if sentence_end is not None:
        end = last.end() + sentence_end.end()
        window = window[: sentence_end.start()]
    elif len(window) > SPAN_LIMIT:
        return Extraction(
            window[:SPAN_LIMIT], "answer_is", last.start(), last.end() + SPAN_LIMIT, "too_long"
        )
    else:
        end = last.end() + len(window)
    return Extraction(window.strip(), "answer_is", last.start(), end)


def _last_hashes(text: str) -> Extraction | None:
    last = None
    for last in _HASHES.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        return None
    end_of_line = text.find("\n", last.end())
    stop = len(text) if end_of_line < 0 else end_of_line
    if stop - last.end() > SPAN_LIMIT:
        span = text[last.end() : last.end() + SPAN_LIMIT]
        return Extraction(span, "hashes", last.start(), last.end() + SPAN_LIMIT, "too_long")
    return Extraction(text[last.end() : stop].strip(), "hashes", last.start(), stop)


def _last_boxed(text: str) -> Extraction | None:
    start = text.rfind("\\boxed")
    while start >= 0:
        m = _BOXED.match(text, start)
        if m is not None:
            return _balanced_span(text, start, m.end())
        start = text.rfind("\\boxed", 0, start)
    return None


def _balanced_span(text: str, marker: int, open_end: int) -> Extraction:
    """The brace group opened just before ``open_end``; scans at most SPAN_LIMIT characters."""
    depth = 1
    limit = min(len(text), open_end + SPAN_LIMIT + 1)
    i = open_end
    while i < limit:
        ch = text[i]
        if ch == "\\":
            i += 2  # an escaped brace (\{ or \}) does not open or close the group
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return Extraction(text[open_end:i].strip(), "boxed", marker, i + 1)
        i += 1
    problem: Literal["too_long", "unbalanced"] = "too_long" if limit < len(text) else "unbalanced"
    return Extraction(text[open_end:limit], "boxed", marker, limit, problem)


def _last_number(text: str) -> Extraction | None:
    last = None
    for last in _NUMBER_IN_TEXT.finditer(text.translate(_UNICODE_MINUS)):  # noqa: B007
        pass
    if last is None:
        return None
    return Extraction(last.group(0), "last_number", last.start(), last.end())
