"""The run's CurveZMQ keys on a host that cannot read the driver's run folder: the Ray actor
writes the material it was sent into its own copy of the folder, owner-only, atomically."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from areal_flow.runtime.ray_actor import install_keys
from areal_flow.transport.curve import (
    KEYS_DIR,
    RunKeys,
    generate_run_keys,
    key_material,
    load_run_keys,
)


def _plan_json(run_dir: Path) -> str:
    return json.dumps({"run_dir": str(run_dir)})


def test_key_material_is_plain_text_and_round_trips(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path / "driver")
    material = key_material(keys)
    assert json.loads(json.dumps(material)) == material  # crosses as JSON-able strings
    assert RunKeys.from_material(material) == keys
    with pytest.raises(ValueError, match="Z85"):
        RunKeys.from_material(material[:3])


def test_an_actor_on_another_host_writes_the_keys_owner_only(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path / "driver")
    remote = tmp_path / "other_host" / "run"  # the actor's copy: not there yet
    install_keys(_plan_json(remote), key_material(keys))
    folder = remote / KEYS_DIR
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert load_run_keys(remote) == keys
    assert sorted(p.name for p in remote.iterdir()) == [KEYS_DIR], "no partial folders left"


def test_replicas_of_one_host_install_the_same_keys_at_once(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path / "driver")
    remote = tmp_path / "other_host" / "run"
    errors: list[BaseException] = []

    def install() -> None:
        try:
            install_keys(_plan_json(remote), key_material(keys))
        except BaseException as err:  # collected and re-checked below
            errors.append(err)

    threads = [threading.Thread(target=install) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert load_run_keys(remote) == keys
    assert sorted(p.name for p in remote.iterdir()) == [KEYS_DIR]


def test_a_folder_with_another_runs_keys_is_refused(tmp_path: Path) -> None:
    keys = generate_run_keys(tmp_path / "driver")
    stale = tmp_path / "other_host" / "run"
    generate_run_keys(stale)
    with pytest.raises(ValueError, match="other CurveZMQ keys"):
        install_keys(_plan_json(stale), key_material(keys))
    install_keys(_plan_json(tmp_path / "driver"), key_material(keys))  # a shared folder: fine


def test_a_plan_without_curve_writes_nothing(tmp_path: Path) -> None:
    install_keys(_plan_json(tmp_path / "run"), None)
    assert not (tmp_path / "run").exists()
