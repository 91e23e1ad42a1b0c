"""Policy-version lag of trajectories, from the per-token versions the generator records.

Rules:
- Tokens keep the version that sampled them, so an interrupted rollout mixes versions. A
  trajectory's version is its **oldest** token's (``min``): that bounds how off-policy any of its
  tokens is, and it is what the staleness controller's histogram receives.
- lag = trainer version − trajectory version (≥ 0 in a correct run; negative lags are reported
  as they are, since they reveal a version-plumbing bug).
- Only sampled tokens count: tokens an episode inserted (``loss_mask`` 0) were not drawn from
  any policy, so ``sampled_versions`` removes them before any lag is computed.
- A trajectory without tokens has no version: that is an error, not a 0.
- Pure Python (no torch): the driver and trainer both call it on Arrow ``versions`` lists.
"""

from __future__ import annotations

from collections.abc import Sequence


def sampled_versions(
    token_versions: Sequence[Sequence[int]], loss_masks: Sequence[Sequence[int]]
) -> list[list[int]]:
    """Per trajectory, the versions of its sampled tokens (``loss_mask`` 1), in order."""
    return [
        [v for v, m in zip(versions, mask, strict=True) if m]
        for versions, mask in zip(token_versions, loss_masks, strict=True)
    ]


def trajectory_version(token_versions: Sequence[int]) -> int:
    """The version of a trajectory: its oldest token's."""
    if len(token_versions) == 0:
        raise ValueError("a trajectory without response tokens has no policy version")
    return int(min(token_versions))


def version_lag_stats(
    token_versions: Sequence[Sequence[int]], trainer_version: int
) -> dict[str, float]:
    """Flat metrics for a batch of trajectories trained at ``trainer_version``.

    ``lag_mean``/``lag_max``/``lag_min``: per-trajectory lag (oldest token); ``token_lag_mean``:
    over all tokens; ``interrupted_frac``: trajectories spanning more than one version;
    ``lag/<k>``: trajectories with lag k.
    """
    if len(token_versions) == 0:
        return {}
    lags = [trainer_version - trajectory_version(v) for v in token_versions]
    token_lags = [trainer_version - int(v) for versions in token_versions for v in versions]
    stats = {
        "lag_mean": sum(lags) / len(lags),
        "lag_max": float(max(lags)),
        "lag_min": float(min(lags)),
        "token_lag_mean": sum(token_lags) / len(token_lags),
        "interrupted_frac": sum(min(v) != max(v) for v in token_versions) / len(token_versions),
    }
    for lag in sorted(set(lags)):
        stats[f"lag/{lag}"] = float(lags.count(lag))
    return stats
