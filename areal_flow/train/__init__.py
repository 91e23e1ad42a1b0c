"""The learning side: policy updates, weight publishing and checkpoints (DESIGN.md §7, §8).

Modules: ``batch`` (Arrow rows → sequences, ids), ``policy`` (model, AdamW, packed forward,
one optimizer step), ``session`` (the trainer node's synchronous core), ``weights``
(safetensors + sha256 per version), ``checkpoint`` (resumable HF-format checkpoints).
Nothing here is imported by the spec/validate path; torch loads inside functions or with the
modules that need it.
"""
