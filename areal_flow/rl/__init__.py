"""Pure RL functions (torch, no processes, no sockets): advantages, decoupled PPO loss,
token log-probs, micro-batch packing and version-lag statistics (DESIGN.md §7).

Importing this package imports torch; ``areal_flow.rl.versions`` alone does not need it but is
re-exported here for convenience.
"""

from areal_flow.rl.advantages import (
    ESTIMATORS,
    Estimator,
    batch_scale,
    group_advantages,
    group_index,
)
from areal_flow.rl.logprobs import token_entropy, token_logprobs
from areal_flow.rl.packing import (
    PackedRow,
    ffd_micro_batches,
    pack_sequences,
    pack_values,
    unpack,
)
from areal_flow.rl.ppo import Aggregation, CapMode, decoupled_ppo_loss
from areal_flow.rl.prompt_tree import PromptTreeRow, pack_prompt_tree, prompt_tree_micro_batches
from areal_flow.rl.versions import sampled_versions, trajectory_version, version_lag_stats

__all__ = [
    "ESTIMATORS",
    "Aggregation",
    "CapMode",
    "Estimator",
    "PackedRow",
    "PromptTreeRow",
    "batch_scale",
    "decoupled_ppo_loss",
    "ffd_micro_batches",
    "group_advantages",
    "group_index",
    "pack_prompt_tree",
    "pack_sequences",
    "pack_values",
    "prompt_tree_micro_batches",
    "sampled_versions",
    "token_entropy",
    "token_logprobs",
    "trajectory_version",
    "unpack",
    "version_lag_stats",
]
