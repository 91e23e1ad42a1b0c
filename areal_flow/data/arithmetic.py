"""A seeded procedural arithmetic task, so the default training graph needs no data files.

Role: generate `Problem` items deterministically from (seed, split, index), with a held-out
split that never shares a problem with training.

Levels (operands drawn uniformly; every answer is a non-negative integer):

=========  ==========================================================  =====================
level      problems                                                    example
=========  ==========================================================  =====================
add1       a + b, one-digit a, b in 0..9                               What is 3 + 4?
sub1       a - b, one-digit, b <= a                                    What is 7 - 2?
mul1       a × b, a, b in 2..9                                         What is 6 × 7?
chain1     three one-digit terms with + and -, never below zero        What is 8 - 3 + 4?
word1      one-step word problem (+, - or ×), numbers 2..9             Mia has 3 apples. ...
add2       a + b, two-digit a, b in 10..99                             What is 37 + 45?
sub2       a - b, two-digit, b <= a                                    What is 81 - 29?
mul2       a × b, a in 10..99, b in 2..9                               What is 23 × 4?
chain2     three or four two-digit terms with + and -, never below 0   What is 52 + 17 - 30?
word2      two-step word problem (a + b - c or a × b + c)              Leo has 12 stamps. ...
=========  ==========================================================  =====================

Multi-step levels over 2-3-digit numbers (two computations a 135M model cannot do in its head;
the tool-use graph's task):

============  ======================================  ==========================================
level         problems                                example
============  ======================================  ==========================================
boxes_shared  (a × b) ÷ c, divisible                  A school buys 24 boxes of 36 pens ... 9
boxes_sold    a × b − c                               A store has 24 crates with 36 cups ...
two_orders    a × b + c × d                           A factory ships 12 packs of 30 cards ...
============  ======================================  ==========================================

`DEFAULT_MIX` weights the easy one-digit levels (where a 135M model already earns some reward,
so group-relative advantages are not all zero) and keeps some harder ones for headroom.

Rules:
- An item is a pure function of (seed, split, index): the same triple gives the same problem on
  any machine (hashes are sha256, never Python's salted ``hash``).
- Held-out disjointness: each problem has a canonical key for the arithmetic it asks (operands
  of + and × sorted, so "3 + 4", "4 + 3" and "Mia has 3 apples, gets 4 more" share one key).
  The key's hash alone decides the split, independent of seed and level, so no test problem's
  computation ever appears in training, for any seeds.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, overload

from areal_flow.data.problem import Problem

Split = Literal["train", "test"]

#: Training mix: level → relative weight.
DEFAULT_MIX: Final[Mapping[str, float]] = {
    "add1": 3.0,
    "sub1": 2.0,
    "word1": 2.0,
    "mul1": 1.0,
    "chain1": 1.0,
    "add2": 1.0,
}
_MAX_DRAWS: Final = 10_000
_NAMES: Final = [("Mia", "She"), ("Leo", "He"), ("Ava", "She"), ("Sam", "He"),
                 ("Zoe", "She"), ("Ben", "He"), ("Ivy", "She"), ("Tom", "He")]  # fmt: skip
_THINGS: Final = [
    "apples",
    "marbles",
    "stickers",
    "pencils",
    "books",
    "cookies",
    "stamps",
    "shells",
]


@dataclass(frozen=True)
class _Draft:
    key: str  # canonical arithmetic; decides the split
    question: str
    answer: int


def canonical_key(op: str, operands: Sequence[int]) -> str:
    """The split key of one computation; + and × chains are order-free."""
    values = sorted(operands) if op in ("add", "mul") else list(operands)
    return f"{op}:{','.join(str(v) for v in values)}"


def split_of(key: str, heldout_fraction: float) -> Split:
    """The split a canonical problem belongs to: a fixed hash bucket, the same for every seed."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if bucket < heldout_fraction else "train"


def _binary(rng: random.Random, op: str, lo: int, hi: int, lo_b: int, hi_b: int) -> _Draft:
    a, b = rng.randint(lo, hi), rng.randint(lo_b, hi_b)
    if op == "sub" and b > a:
        a, b = b, a
    symbol, value = {"add": ("+", a + b), "sub": ("-", a - b), "mul": ("×", a * b)}[op]
    return _Draft(canonical_key(op, [a, b]), f"What is {a} {symbol} {b}?", value)


def _chain(rng: random.Random, terms: int, lo: int, hi: int) -> _Draft:
    total = rng.randint(lo, hi)
    text, key = str(total), str(total)
    for _ in range(terms - 1):
        n = rng.randint(lo, hi)
        sign = "-" if n <= total and rng.random() < 0.5 else "+"
        total = total - n if sign == "-" else total + n
        text, key = f"{text} {sign} {n}", f"{key}{sign}{n}"
    return _Draft(f"chain:{key}", f"What is {text}?", total)


def _word_one_step(rng: random.Random) -> _Draft:
    name, pronoun = rng.choice(_NAMES)
    things = rng.choice(_THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    kind = rng.randrange(3)
    if kind == 0:
        question = (f"{name} has {a} {things}. {pronoun} gets {b} more {things}. "
                    f"How many {things} does {name} have now?")  # fmt: skip
        return _Draft(canonical_key("add", [a, b]), question, a + b)
    if kind == 1:
        a, b = max(a, b), min(a, b)
        question = (f"{name} had {a} {things} and gave {b} of them to a friend. "
                    f"How many {things} does {name} have left?")  # fmt: skip
        return _Draft(canonical_key("sub", [a, b]), question, a - b)
    question = (f"{name} has {a} bags with {b} {things} in each bag. "
                f"How many {things} does {name} have in total?")  # fmt: skip
    return _Draft(canonical_key("mul", [a, b]), question, a * b)


def _word_two_step(rng: random.Random) -> _Draft:
    name, pronoun = rng.choice(_NAMES)
    things = rng.choice(_THINGS)
    if rng.random() < 0.5:
        a, b = rng.randint(5, 20), rng.randint(2, 20)
        c = rng.randint(1, a + b)
        question = (f"{name} has {a} {things}. {pronoun} buys {b} more and then gives {c} "
                    f"to a friend. How many {things} does {name} have now?")  # fmt: skip
        return _Draft(f"chain:{a}+{b}-{c}", question, a + b - c)
    a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 20)
    question = (f"{name} buys {a} packs of {things} with {b} in each pack, and finds {c} more. "
                f"How many {things} does {name} have?")  # fmt: skip
    return _Draft(f"chain:{min(a, b)}*{max(a, b)}+{c}", question, a * b + c)


_GOODS: Final = [("pens", "boxes"), ("cups", "crates"), ("eggs", "trays"), ("bolts", "bags"),
                 ("cards", "packs")]  # fmt: skip


def _boxes_shared(rng: random.Random) -> _Draft:
    """(a × b) ÷ c: a boxes of b things shared equally by c groups (divisible)."""
    things, boxes = rng.choice(_GOODS)
    while True:
        a, b, c = rng.randint(12, 48), rng.randint(12, 60), rng.choice((3, 4, 6, 8, 9, 12))
        if (a * b) % c == 0 and (a * b) // c >= 10:
            break
    question = (f"A school buys {a} {boxes} of {things} with {b} {things} in each. The "
                f"{things} are shared equally among {c} classes. How many {things} does each "
                "class get?")  # fmt: skip
    return _Draft(f"share:{min(a, b)}*{max(a, b)}/{c}", question, a * b // c)


def _boxes_sold(rng: random.Random) -> _Draft:
    """a × b − c: a store's stock after a sale."""
    things, boxes = rng.choice(_GOODS)
    a, b = rng.randint(12, 60), rng.randint(12, 48)
    c = rng.randint(100, a * b - 10)
    question = (f"A store has {a} {boxes} with {b} {things} in each. It sells {c} {things}. "
                f"How many {things} are left?")  # fmt: skip
    return _Draft(f"sold:{min(a, b)}*{max(a, b)}-{c}", question, a * b - c)


def _two_orders(rng: random.Random) -> _Draft:
    """a × b + c × d: two orders of boxes of different sizes."""
    things, boxes = rng.choice(_GOODS)
    a, b, c, d = rng.randint(11, 40), rng.randint(12, 60), rng.randint(11, 40), rng.randint(12, 60)
    question = (f"A factory ships {a} {boxes} of {b} {things} and {c} {boxes} of {d} {things}. "
                f"How many {things} does it ship in total?")  # fmt: skip
    first, second = sorted([(a, b), (c, d)])
    return _Draft(f"orders:{first}+{second}", question, a * b + c * d)


LEVELS: Final[Mapping[str, Callable[[random.Random], _Draft]]] = {
    "add1": lambda rng: _binary(rng, "add", 0, 9, 0, 9),
    "sub1": lambda rng: _binary(rng, "sub", 0, 9, 0, 9),
    "mul1": lambda rng: _binary(rng, "mul", 2, 9, 2, 9),
    "chain1": lambda rng: _chain(rng, 3, 1, 9),
    "word1": _word_one_step,
    "add2": lambda rng: _binary(rng, "add", 10, 99, 10, 99),
    "sub2": lambda rng: _binary(rng, "sub", 10, 99, 10, 99),
    "mul2": lambda rng: _binary(rng, "mul", 10, 99, 2, 9),
    "chain2": lambda rng: _chain(rng, rng.choice((3, 4)), 10, 99),
    "word2": _word_two_step,
    "boxes_shared": _boxes_shared,
    "boxes_sold": _boxes_sold,
    "two_orders": _two_orders,
}


class ArithmeticTask:
    """Problems from a weighted ``mix`` of levels; ``heldout_fraction`` of them are test-only."""

    def __init__(
        self,
        *,
        seed: int = 0,
        mix: Mapping[str, float] | None = None,
        heldout_fraction: float = 0.2,
    ) -> None:
        self.mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = sorted(set(self.mix) - set(LEVELS))
        if unknown:
            raise ValueError(f"unknown arithmetic levels {unknown}; known: {sorted(LEVELS)}")
        if not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError(f"mix needs non-negative weights with a positive sum, got {self.mix}")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.seed = seed
        self.heldout_fraction = heldout_fraction
        self._levels = list(self.mix)
        self._weights = [self.mix[name] for name in self._levels]

    def item(self, split: Split, index: int) -> Problem:
        """Item ``index`` of ``split``: the same for the same (seed, split, index)."""
        return self.keyed_item(split, index)[0]

    def keyed_item(self, split: Split, index: int) -> tuple[Problem, str]:
        """Item ``index`` of ``split`` and its canonical key (the one that decided its split)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if index < 0:
            raise ValueError(f"index must be non-negative, got {index}")
        digest = hashlib.sha256(f"{self.seed}:{split}:{index}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        level = rng.choices(self._levels, weights=self._weights)[0]
        draft = self._draw_in_split(rng, level, split)
        problem_id = f"arith-{self.seed}-{split}-{index}"
        return Problem(problem_id, draft.question, str(draft.answer), level), draft.key

    def dataset(self, split: Split, size: int) -> ArithmeticDataset:
        """The first ``size`` items of ``split`` as a sequence (one epoch of a prompt source)."""
        return ArithmeticDataset(self, split, size)

    def _draw_in_split(self, rng: random.Random, level: str, split: Split) -> _Draft:
        for _ in range(_MAX_DRAWS):
            draft = LEVELS[level](rng)
            if split_of(draft.key, self.heldout_fraction) == split:
                return draft
        raise ValueError(
            f"level {level!r} produced no {split} problem in {_MAX_DRAWS} draws with "
            f"heldout_fraction={self.heldout_fraction}; use a fraction nearer 0.5"
        )


class ArithmeticDataset(Sequence[Problem]):
    """``size`` items of one split of an `ArithmeticTask`, computed on access."""

    def __init__(self, task: ArithmeticTask, split: Split, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.task, self.split, self.size = task, split, size
        self.name = f"arithmetic-{split}"

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> Problem: ...
    @overload
    def __getitem__(self, index: slice) -> list[Problem]: ...
    def __getitem__(self, index: int | slice) -> Problem | list[Problem]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.size))]
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        return self.task.item(self.split, index % self.size)

    def __iter__(self) -> Iterator[Problem]:
        return (self.task.item(self.split, i) for i in range(self.size))
