"""Weight publisher: delivers each new policy version to every generator replica.

Rules: safetensors only (never pickle); every version carries a checksum that names its
algorithm (blake3), verified here once for all generators, which then load without hashing
again; superseded versions are deleted once no generator uses them. Stateless: a restarted
replica adopts the versions it finds beside the next notice, so pruning goes on; the runtime
hands restarted generators the newest notice itself.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from areal_flow.node import NodeContext, Output, Transform
from areal_flow.roles import PublisherSpec
from areal_flow.spec import Port


class WeightPublisherConfig(PublisherSpec):
    """Fans weight notices out to generators and tracks their acknowledgements."""

    inputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}
    outputs: ClassVar[dict[str, Port]] = {"weights": Port(record="weights", weights=True)}

    kind: Literal["weight_publisher"] = "weight_publisher"
    keep_versions: int = Field(2, ge=1, le=100, description="Versions kept before deletion.")


class WeightPublisher(Transform[WeightPublisherConfig]):
    """Verifies each weight notice's checksum, forwards it (the runtime delivers it to every
    generator replica) and deletes version folders older than the newest ``keep_versions``.

    Generator acknowledgements (which version each replica has loaded) are a control-plane
    matter, not part of this node yet: until they arrive, ``keep_versions`` ≥ 2 is what keeps a
    slow generator's version on disk while it loads.
    """

    def setup(self, ctx: NodeContext) -> None:
        super().setup(ctx)
        self.kept: dict[int, str] = {}  # version → folder, oldest first

    def process(self, batch: pa.RecordBatch) -> Output:
        from areal_flow.train.weights import HASH_ALL_CORES, verify_weights

        assert self.ctx is not None
        metrics = self.ctx.metrics
        for row in batch.to_pylist():
            began = time.perf_counter()
            # Every core: the check is on the path from publish to generating (the generators
            # wait for it), and takes a fraction of a second.
            verify_weights(row["path"], row["checksum"], threads=HASH_ALL_CORES)
            metrics.gauge("verify_s", time.perf_counter() - began)
            metrics.gauge("publish_to_forward_s", time.time() - float(row["created_at"]))
            metrics.gauge("version", row["version"])
            metrics.count("versions_published")
            if not self.kept:
                self._adopt(Path(row["path"]).parent, int(row["version"]))
            self.kept[int(row["version"])] = row["path"]
        self._prune()
        return batch

    def _adopt(self, root: Path, version: int) -> None:
        """Older versions already in the store (published before this replica restarted)."""
        for folder in root.glob("v*"):
            if folder.is_dir() and folder.name[1:].isdigit() and int(folder.name[1:]) < version:
                self.kept[int(folder.name[1:])] = str(folder)

    def _prune(self) -> None:
        from areal_flow.train.weights import remove_version

        assert self.ctx is not None
        keep = self.config.keep_versions
        newest = sorted(self.kept)
        for version in newest[: max(0, len(newest) - keep)]:
            remove_version(self.kept.pop(version))
            self.ctx.metrics.count("versions_deleted")

    def teardown(self) -> None:
        """Free shared memory: versions in /dev/shm are RAM and nothing reads them after a run
        (a resumed trainer re-publishes its version). ``run_dir`` versions are kept."""
        from areal_flow.train.weights import remove_version

        if self.config.store == "shm":
            for path in getattr(self, "kept", {}).values():
                remove_version(path)
