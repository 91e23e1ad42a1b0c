"""Version-lag statistics from per-token versions."""

from __future__ import annotations

import pytest

from areal_flow.rl import trajectory_version, version_lag_stats


def test_a_trajectory_is_as_old_as_its_oldest_token() -> None:
    assert trajectory_version([3, 3, 4, 5]) == 3  # interrupted twice, started at version 3
    with pytest.raises(ValueError, match="without response tokens"):
        trajectory_version([])


def test_lag_stats_by_hand() -> None:
    # trainer at version 5: lags by oldest token 0, 2, 1; token lags 0,0 | 2,1,1 | 1
    stats = version_lag_stats([[5, 5], [3, 4, 4], [4]], trainer_version=5)
    assert stats["lag_mean"] == pytest.approx(1.0)
    assert (stats["lag_max"], stats["lag_min"]) == (2.0, 0.0)
    assert stats["token_lag_mean"] == pytest.approx(5 / 6)
    assert stats["interrupted_frac"] == pytest.approx(1 / 3)
    assert (stats["lag/0"], stats["lag/1"], stats["lag/2"]) == (1.0, 1.0, 1.0)
    assert version_lag_stats([], trainer_version=5) == {}
