"""The math-shaped graphs shrunk for tests: the tiny random model on the hf engine, two steps
(``areal_flow.testing.tiny_overrides``, shared with the GPU check's CPU dry run)."""

from __future__ import annotations

from areal_flow.testing import tiny_overrides

__all__ = ["tiny_overrides"]
