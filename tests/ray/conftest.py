"""One local Ray cluster per test session, on 127.0.0.1, with Ray's token authentication."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# Ray reads these when imported. Its node IP: on one machine every socket stays on loopback.
# Authentication: Ray ≥ 2.52 turns tokens on for new local clusters and would write the token
# to ~/.ray; it lives in this process's environment instead, which the cluster's processes and
# the CLI runs started from here inherit.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A 2-CPU Ray cluster started by this process; yields its address for ``--address``.
    Ray's temp folder is short: its socket paths must fit in 107 bytes."""
    import ray

    folder = tempfile.mkdtemp(prefix="afray")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=folder, log_to_driver=False)
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
