"""The staleness controller against hand-worked capacities and simulated training loops.

The unit is the prompt group (the trainer's unit); capacity = (⌊(η + i)/K⌋ + 1)·G − (accepted +
running) with G groups per batch and K optimizer steps (versions) per batch.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from areal_flow.runtime.staleness import StalenessController


def test_capacity_follows_the_formula() -> None:
    ctl = StalenessController(batch_groups=4, max_lag=2)
    assert ctl.capacity == (2 + 0 + 1) * 4  # 12 groups, nothing admitted
    ctl.admit(3)
    ctl.admit(2)
    ctl.settle(accepted=True)
    assert (ctl.running, ctl.accepted) == (4, 1)
    assert ctl.capacity == 12 - (1 + 4)
    ctl.set_version(1)
    assert ctl.capacity == (2 + 1 + 1) * 4 - 5


def test_k_updates_per_batch_make_a_batch_span_k_versions() -> None:
    # K = 2: batch b starts at version 2b, so versions 2b and 2b + 1 admit for the same batch.
    ctl = StalenessController(batch_groups=4, max_lag=2, updates_per_batch=2)
    assert ctl.capacity == (2 // 2 + 1) * 4  # two batches' worth at version 0
    ctl.set_version(1)
    assert ctl.capacity == ((2 + 1) // 2 + 1) * 4  # still two: version 1 is batch 0's 2nd step
    ctl.set_version(2)
    assert ctl.capacity == ((2 + 2) // 2 + 1) * 4  # batch 1 started: one more batch
    sync = StalenessController(batch_groups=4, max_lag=0, updates_per_batch=4)
    for version in range(4):  # η = 0: no admission for batch 1 until batch 0 is trained
        sync.set_version(version)
        assert sync.capacity == 4
    sync.set_version(4)
    assert sync.capacity == 8


def test_a_batch_of_groups_is_admitted_only_if_it_fits_whole() -> None:
    ctl = StalenessController(batch_groups=4, max_lag=0)
    ctl.admit(3)
    assert ctl.capacity == 1
    assert not ctl.can_admit(2)
    assert ctl.can_admit(1)
    with pytest.raises(RuntimeError, match="call can_admit first"):
        ctl.admit(2)
    assert ctl.running == 3  # the refused admit changed nothing


def test_groups_filtered_out_whole_give_capacity_back_accepted_ones_do_not() -> None:
    ctl = StalenessController(batch_groups=2, max_lag=0)
    ctl.admit(2)
    assert ctl.capacity == 0
    ctl.settle(accepted=False)  # the filter dropped a whole group (uniform reward)
    assert ctl.capacity == 1 and ctl.rejected == 1
    ctl.settle(accepted=True)  # a group that lost rows but reached the trainer counts whole
    assert ctl.capacity == 1 and ctl.accepted == 1
    ctl.set_version(1)
    assert ctl.capacity == 3


def test_unbounded_gate_never_closes() -> None:
    ctl = StalenessController(batch_groups=2, max_lag=None)
    for _ in range(1000):
        ctl.admit(8)
    assert ctl.capacity == float("inf")
    assert ctl.running == 8000
    ctl.record_lags([0] * 8)
    assert ctl.metrics()["capacity"] == float("inf")


def test_starvation_is_an_error_not_a_hang() -> None:
    # The source asks for 3 groups at a time, a batch is 2: at η = 0 they never fit.
    ctl = StalenessController(batch_groups=2, max_lag=0)
    ctl.admit(2)
    assert not ctl.can_admit(3)  # still in flight: the gate may reopen
    ctl.settle(accepted=True)
    ctl.settle(accepted=True)
    ctl.set_version(1)
    with pytest.raises(RuntimeError, match="fewer groups per batch"):
        ctl.can_admit(3)


def test_bad_events_are_refused() -> None:
    ctl = StalenessController(batch_groups=4, max_lag=1, version=3)
    with pytest.raises(ValueError, match="only 0 groups are in flight"):
        ctl.settle(accepted=True)
    ctl.admit(2)
    with pytest.raises(ValueError, match="newer than the trainer"):
        ctl.record_lags([4])
    with pytest.raises(ValueError, match="backwards"):
        ctl.set_version(2)
    with pytest.raises(ValueError, match="groups"):
        ctl.can_admit(0)
    with pytest.raises(ValueError, match="max_lag"):
        StalenessController(batch_groups=4, max_lag=-1)
    with pytest.raises(ValueError, match="updates_per_batch"):
        StalenessController(batch_groups=4, max_lag=1, updates_per_batch=0)


def test_metrics_hold_counters_and_the_lag_histogram() -> None:
    ctl = StalenessController(batch_groups=4, max_lag=2, version=5)
    ctl.admit(3)
    ctl.record_lags([5, 4, 3])
    ctl.record_lags([4])
    ctl.settle(accepted=True)
    ctl.settle(accepted=False)
    m = ctl.metrics()
    assert m["accepted"] == 1 and m["running"] == 1 and m["rejected"] == 1
    assert m["admitted"] == 3 and m["version"] == 5
    assert m["capacity"] == (2 + 5 + 1) * 4 - (1 + 1)
    assert (m["lag/0"], m["lag/1"], m["lag/2"]) == (1, 2, 1)
    assert m["lag_mean"] == pytest.approx((0 + 1 + 2 + 1) / 4)
    assert m["lag_max"] == 2


def test_resume_releases_capacity_held_by_lost_in_flight_groups() -> None:
    """AReaL #1388: after recovery, groups in flight at the crash kept holding capacity."""
    ctl = StalenessController(batch_groups=4, max_lag=1)
    for version in range(3):  # three full training steps
        ctl.admit(4)
        for _ in range(4):
            ctl.settle(accepted=True)
        ctl.record_lags([version] * 16)
        ctl.set_version(version + 1)
    ctl.admit(4)
    ctl.admit(4)
    ctl.settle(accepted=True)
    ctl.settle(accepted=True)  # the trainer holds 2 of its next batch, 6 in flight: the crash
    assert ctl.capacity == (1 + 3 + 1) * 4 - (14 + 6)  # 0: the gate is shut
    state = json.loads(json.dumps(ctl.state_dict()))  # checkpoints are JSON

    resumed = StalenessController.from_state(state, held=12)  # the checkpoint holds 3 batches
    assert resumed.running == 0
    assert resumed.accepted == 12  # the 2 unsaved accepted ones died too
    assert resumed.capacity == (1 + 1) * 4  # as a fresh run at version 3 with nothing in flight
    assert resumed.lost == 8  # 6 in flight + 2 accepted but not checkpointed
    assert resumed.admitted == resumed.accepted + resumed.running + resumed.rejected + resumed.lost
    assert resumed.lag_histogram == {0: 48}
    resumed.admit(4)  # the resumed run really can refill the pipeline: η + 1 = 2 batches
    resumed.admit(4)
    assert not resumed.can_admit(1)


def test_resume_with_k_two_restores_from_the_groups_the_checkpoint_holds() -> None:
    """Issue 15: ``from_state`` assumed accepted = version × B, so a K = 2 run resumed at
    version 6 raised 'restored trainer holds 192 trajectories'."""
    ctl = StalenessController(batch_groups=4, max_lag=2, updates_per_batch=2)
    for _ in range(3):  # three batches of 4 groups, each trained in 2 steps
        ctl.admit(4)
        for _ in range(4):
            ctl.settle(accepted=True)
        ctl.set_version(ctl.version + 2)
    ctl.admit(4)
    state = ctl.state_dict()
    resumed = StalenessController.from_state(state, held=12, version=6)
    assert (resumed.version, resumed.accepted, resumed.running, resumed.lost) == (6, 12, 0, 4)
    assert resumed.capacity == ((2 + 6) // 2 + 1) * 4 - 12
    with pytest.raises(ValueError, match="older than the trainer checkpoint"):
        StalenessController.from_state(state, held=40)
    with pytest.raises(ValueError, match="lacks"):
        StalenessController.from_state({"version": 1}, held=0)


# ------------------------------------------------------------------------ simulated training


@dataclass
class Loop:
    """A source, fast generators, a row-dropping filter and a K-step trainer around one gate.

    Each tick admits or completes one group; the trainer makes one optimizer step every
    ``train_every`` ticks (generation is faster than training). A completed group loses
    ``drop`` random rows (0..2) in the filter, or all of them with ``reject_prob``. The trainer
    takes G whole groups, splits their rows into K minibatches and trains one per step; a
    trajectory's lag is the trainer version before the step that trains it minus the version
    that sampled it (the bound's definition: at most η + K − 1).
    """

    ctl: StalenessController
    group_size: int
    rng: random.Random
    drop: tuple[int, int] = (0, 0)
    reject_prob: float = 0.0
    fifo: bool = True
    train_every: int = 3
    in_flight: list[int] = field(default_factory=list)  # serving version when admitted
    buffer: list[list[int]] = field(default_factory=list)  # accepted groups' row versions
    minibatches: list[list[int]] = field(default_factory=list)  # the batch being trained
    lags: list[int] = field(default_factory=list)
    first_minibatch_lags: list[int] = field(default_factory=list)
    running_at_batch_start: list[int] = field(default_factory=list)
    ticks: int = 0
    first: bool = False  # the next step trains the batch's first minibatch

    @property
    def k(self) -> int:
        return self.ctl.updates_per_batch

    def tick(self) -> None:
        self.ticks += 1
        if self.ctl.can_admit(1) and (not self.in_flight or self.rng.random() < 0.6):
            self.ctl.admit(1)
            self.in_flight.append(self.ctl.admission_version)
        elif self.in_flight:
            index = 0 if self.fifo else self.rng.randrange(len(self.in_flight))
            self._complete(self.in_flight.pop(index))
        if self.ticks % self.train_every == 0:
            self._train()

    def _complete(self, version: int) -> None:
        rows = self.group_size - self.rng.randint(*self.drop)
        if rows <= 0 or self.rng.random() < self.reject_prob:
            self.ctl.settle(accepted=False)
            return
        self.ctl.record_lags([version] * rows)
        self.ctl.settle(accepted=True)
        self.buffer.append([version] * rows)

    def _train(self) -> None:
        g = self.ctl.batch_groups
        if not self.minibatches and len(self.buffer) >= g:
            rows = [v for group in self.buffer[:g] for v in group]
            self.buffer = self.buffer[g:]
            self.rng.shuffle(rows)
            self.minibatches = [rows[m :: self.k] for m in range(self.k)]
            self.running_at_batch_start.append(self.ctl.running)
            self.first = True
        if not self.minibatches:
            return
        batch = self.minibatches.pop(0)
        lags = [self.ctl.version - v for v in batch]
        self.lags += lags
        if self.first:
            self.first_minibatch_lags += lags
            self.first = False
        self.ctl.set_version(self.ctl.version + 1)
        self.ctl.set_serving(self.ctl.version)  # the generators load the new weights


def run_loop(loop: Loop, batches: int) -> Loop:
    steps = batches * loop.k
    for _ in range(200_000):
        if loop.ctl.version >= steps:
            return loop
        loop.tick()
    raise AssertionError(f"the loop stalled at version {loop.ctl.version}")


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("eta", [0, 1, 2])
@pytest.mark.parametrize("drop", [(0, 0), (1, 1), (1, 2)])
def test_the_lag_stays_within_eta_plus_k_minus_one_for_any_k_and_row_drops(
    k: int, eta: int, drop: tuple[int, int]
) -> None:
    """Issue 15: with K > 1 (K = 2 reached lag 31 after 30 batches, K = 4 lag 91) or a filter
    dropping rows (η = 2: lag 3 → 6 and growing; η = 0: "can never admit") the old gate lost
    the bound. Counting groups and batches of K versions keeps it, and never raises."""
    ctl = StalenessController(batch_groups=4, max_lag=eta, updates_per_batch=k)
    loop = run_loop(Loop(ctl, group_size=8, rng=random.Random(k * 100 + eta), drop=drop), 40)
    assert max(loop.lags) <= eta + k - 1
    assert max(loop.first_minibatch_lags) <= eta
    assert ctl.admitted == ctl.accepted + ctl.running + ctl.rejected
    assert ctl.accepted + ctl.running <= ((eta + ctl.version) // k + 1) * 4
    if eta == 0:  # synchronous: a batch starts only when nothing is in flight
        assert set(loop.running_at_batch_start) == {0}
        assert set(loop.first_minibatch_lags) == {0}


def test_eta_one_overlaps_generation_and_training() -> None:
    ctl = StalenessController(batch_groups=2, max_lag=1)
    loop = run_loop(Loop(ctl, group_size=4, rng=random.Random(1)), 20)
    assert max(loop.lags) == 1  # off-policy data appears, but never older than η
    assert max(loop.running_at_batch_start) > 0  # generation continued while training


@settings(max_examples=60, deadline=None)
@given(
    eta=st.integers(0, 4),
    batch_groups=st.integers(1, 4),
    k=st.integers(1, 4),
    group_size=st.integers(1, 5),
    drop=st.integers(0, 2),
    reject_prob=st.floats(0.0, 0.6),
    seed=st.integers(0, 10_000),
)
def test_in_order_completion_keeps_every_lag_within_the_bound(
    eta: int,
    batch_groups: int,
    k: int,
    group_size: int,
    drop: int,
    reject_prob: float,
    seed: int,
) -> None:
    k = min(k, batch_groups)  # validation: updates_per_batch ≤ batch_groups
    ctl = StalenessController(batch_groups=batch_groups, max_lag=eta, updates_per_batch=k)
    rng = random.Random(seed)
    loop = run_loop(Loop(ctl, group_size, rng, (0, drop), reject_prob, fifo=True), 8)
    assert max(loop.lags) <= eta + k - 1
    assert ctl.admitted == ctl.accepted + ctl.running + ctl.rejected


def test_out_of_order_completion_can_exceed_eta() -> None:
    """The gate bounds admitted volume; a long rollout overtaken by later ones lags more."""
    ctl = StalenessController(batch_groups=2, max_lag=1)
    ctl.admit(1)  # the slow one, sampled at version 0
    for version in range(3):
        while ctl.can_admit(1):
            ctl.admit(1)
        ctl.record_lags([version, version])  # later rollouts overtake it
        ctl.settle(accepted=True)
        ctl.settle(accepted=True)
        ctl.set_version(version + 1)
    ctl.record_lags([0])
    assert ctl.metrics()["lag_max"] == 3  # with η = 1


def test_admission_waits_for_the_generators_to_serve_the_new_version() -> None:
    # η = 0, 2 groups a batch: the trainer stepped to version 1, the generators still serve 0.
    ctl = StalenessController(batch_groups=2, max_lag=0)
    ctl.set_serving(0)
    ctl.admit(2)
    ctl.settle(accepted=True)
    ctl.settle(accepted=True)
    ctl.set_version(1)
    assert ctl.admission_version == 0 and ctl.capacity == 0
    assert not ctl.can_admit(2)  # closed, but not starved: a weight load will reopen it
    ctl.set_serving(1)
    assert ctl.capacity == 2 and ctl.can_admit(2)
    ctl.set_serving(0)  # a late, older report never moves it back
    assert ctl.admission_version == 1
    assert ctl.metrics()["serving"] == 1.0


def test_serving_is_capped_by_the_trainer_version() -> None:
    ctl = StalenessController(batch_groups=4, max_lag=1)
    ctl.set_serving(3)  # cannot serve what the trainer has not made
    assert ctl.admission_version == 0 and ctl.capacity == 8
