"""Ingest progress on disk: each node's progress file, its shards as they fill, and the merged manifest.

A node's progress file ``.ingest/node-RRRR-of-NNNN.json`` lists its finished shards, each with the
position ``(item, clip)`` of the next sample, so a re-run resumes after the last finished shard.
It is replaced atomically and only after the shard it records is fsynced and renamed, so after a
kill at any moment every recorded shard is whole (a renamed but unrecorded shard, or a ``.tmp``,
is removed and written again).

An item whose decoding crashed its worker or ran past ``ingest.file_timeout`` (reasons in
:data:`FAILED_REASONS`) is also recorded in the progress file, under ``failed`` (item index -> skip
record), as soon as its turn comes: a re-run does not try it again, even when it lies after the last
finished shard; :func:`forget_failed` (``avssl ingest --retry-failed``) does.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from avssl.data.shards import MANIFEST, SCHEMA_VERSION, ShardWriter, write_atomic

log = logging.getLogger(__name__)

STATE_DIR = ".ingest"
FAILED_REASONS = ("crashed", "timeout")  # skips a re-run does not retry unless asked (``--retry-failed``)


@dataclass
class ItemResult:
    """What one item produced: samples in its spool file (seconds of each), or why it was skipped."""

    seconds: list[float] = field(default_factory=list)
    skipped: dict[str, str] | None = None
    dropped_short: int = 0


def read_spool(spool: Path) -> Iterator[dict[str, bytes]]:
    """The samples that :func:`avssl.ingest.run.process_item` pickled, one after another, into ``spool``."""
    with open(spool, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def state_path(out: Path, rank: int, num_nodes: int) -> Path:
    return out / STATE_DIR / f"node-{rank:04d}-of-{num_nodes:04d}.json"


def load_state(out: Path, rank: int, num_nodes: int, params: dict, inputs_sha: str) -> dict[str, Any]:
    """This node's progress (fresh when none); drop shards whose file vanished and stale temp files."""
    path = state_path(out, rank, num_nodes)
    fresh = {"params": params, "inputs_sha1": inputs_sha, "shards": [], "tail": [], "complete": False, "failed": {}}
    if not path.is_file():
        return fresh
    state = json.loads(path.read_text())
    state.setdefault("failed", {})  # progress files written before crash/timeout records
    for name, want in (("parameters", params), ("inputs", inputs_sha)):
        have = state["params"] if name == "parameters" else state["inputs_sha1"]
        if have != want:
            raise ValueError(
                f"{out} holds an ingest with different {name} ({have} vs {want}); "
                "re-run with the original command, or use a new --out folder"
            )
    kept = []
    for shard in state["shards"]:
        if not (out / shard["name"]).is_file():
            log.warning("%s is listed as finished but missing; re-ingesting from there", out / shard["name"])
            break
        kept.append(shard)
    if len(kept) < len(state["shards"]):
        state.update(shards=kept, tail=[], complete=False)
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Replace a node's progress file atomically."""
    write_atomic(path, json.dumps(state).encode())


def forget_failed(state: dict[str, Any]) -> int:
    """Forget this node's crashed and timed-out items so that the run tries them again: the shards
    finished after the first of them are dropped (their samples come after it in input order) and the
    node is marked incomplete. Returns how many items are forgotten (0: ``state`` is unchanged)."""
    failed = state["failed"]
    if not failed:
        return 0
    first = min(int(i) for i in failed)
    state.update(shards=[s for s in state["shards"] if tuple(s["next"]) <= (first, 0)], tail=[], complete=False,
                 failed={})  # fmt: skip
    return len(failed)


def _shard_name(index: int, rank: int, num_nodes: int) -> str:
    return f"{index * num_nodes + rank:06d}.tar"


def merge_manifest(out: Path, num_nodes: int) -> dict[str, Any] | None:
    """Write ``manifest.json`` from all node progress files once every node is complete."""
    states = []
    for rank in range(num_nodes):
        path = state_path(out, rank, num_nodes)
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if not state["complete"]:
            return None
        states.append(state)
    shards = sorted((s for st in states for s in st["shards"]), key=lambda s: s["name"])
    skipped = [e for st in states for s in st["shards"] + [{"skipped": st["tail"]}] for e in s["skipped"]]
    skipped += [e for st in states for e in st.get("unreadable", [])]
    seconds = sum(s["seconds"] for s in shards)
    manifest = {
        "version": SCHEMA_VERSION,
        "params": states[0]["params"],
        "shards": [{"name": s["name"], "samples": s["samples"], "seconds": s["seconds"]} for s in shards],
        "total_samples": sum(s["samples"] for s in shards),
        "total_hours": seconds / 3600.0,
        "ingested_inputs": sum(s["inputs"] for s in shards),
        "dropped_short_clips": sum(s["dropped_short"] for st in states for s in st["shards"])
        + sum(st.get("tail_dropped_short", 0) for st in states),
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(Counter(e["reason"] for e in skipped).items())),
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


class NodeShards:
    """This node's shards: samples go into the open shard; a full shard is closed (fsynced, renamed) and
    then recorded in the node's progress file with the position of the next sample."""

    def __init__(self, out: Path, state: dict, state_path: Path, rank: int, num_nodes: int, per_shard: int):
        self.out, self.state, self.state_path = out, state, state_path
        self.rank, self.num_nodes, self.per_shard = rank, num_nodes, per_shard
        self._reset()

    def _reset(self) -> None:
        self.writer: ShardWriter | None = None
        self.seconds, self.skipped, self.dropped_short, self.inputs = 0.0, [], 0, 0

    @property
    def total(self) -> int:
        """Samples written so far (finished shards and the open one)."""
        return sum(s["samples"] for s in self.state["shards"]) + (self.writer.samples if self.writer else 0)

    def add_item(self, idx: int, first: int, result: ItemResult, spool: Path) -> None:
        """Item ``idx``'s samples from ``first`` on (earlier ones are in finished shards), then its spool is removed.
        A crashed or timed-out item is recorded in the progress file at once."""
        if result.skipped:
            self.skipped.append(result.skipped)
            if result.skipped["reason"] in FAILED_REASONS and str(idx) not in self.state["failed"]:
                self.state["failed"][str(idx)] = result.skipped
                save_state(self.state_path, self.state)
        n = len(result.seconds)
        if n <= first:
            self.dropped_short += result.dropped_short
        for j, sample in enumerate(read_spool(spool) if n > first else ()):
            if j < first:
                continue
            if self.writer is None:
                self.writer = ShardWriter(self.out / _shard_name(len(self.state["shards"]), self.rank, self.num_nodes))
            self.writer.add(sample)
            self.seconds += result.seconds[j]
            if j == n - 1:
                self.inputs += 1
                self.dropped_short += result.dropped_short
            if self.writer.samples >= self.per_shard:
                self._close((idx + 1, 0) if j == n - 1 else (idx, j + 1))
        spool.unlink(missing_ok=True)

    def _close(self, next_pos: tuple[int, int]) -> None:
        self.writer.close()
        self.state["shards"].append({"name": self.writer.path.name, "samples": self.writer.samples,
                                     "seconds": self.seconds, "next": list(next_pos), "skipped": self.skipped,
                                     "dropped_short": self.dropped_short, "inputs": self.inputs})  # fmt: skip
        save_state(self.state_path, self.state)
        self._reset()

    def finish(self, num_items: int) -> None:
        """All items are in: close the open shard and mark this node complete."""
        if self.writer is not None:
            self._close((num_items, 0))
        self.state.update(tail=self.skipped, tail_dropped_short=self.dropped_short, complete=True)
        save_state(self.state_path, self.state)
