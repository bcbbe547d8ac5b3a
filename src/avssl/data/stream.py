"""Shards -> batches for training. The trainer's side of the shard contract.

The loader streams WebDataset tar shards (a shard folder with ``manifest.json``, a brace-expanded
list such as ``shards/{000000..000099}.tar``, or any URL / ``pipe:`` source WebDataset opens),
shuffles through a buffer, splits the stream by rank and by DataLoader worker, and in the workers
draws an aligned random crop of ``cfg.data.crop_seconds`` for each sample (the audio window and
exactly the frames shown in it, chosen from the sample's lengths) and decodes only that window with
:func:`avssl.data.shards.decode_sample` (no frames when the run has no video view; :func:`avssl.data.crops.crop_sample`),
then collates crops into a :class:`Batch`. Resolving ``--data`` to shards and checking their manifest is
:mod:`avssl.data.shardset`.

Determinism and equal lengths. Each rank reads an endless, seeded stream made of *passes*: pass
``p`` permutes the shard list with ``seed`` and ``p`` (the same permutation on every rank), gives
each (rank, worker) slot its share, shuffles through the buffer and crops with a generator seeded
from ``(seed, p, key)``. A batch never spans two passes (each slot's pass yields
``n // batch_size`` batches; its last ``n % batch_size`` shuffled samples sit that pass out), so no
batch holds a clip twice. Batch ``g`` of a rank always comes from the same slot, so the stream is a
pure function of ``(seed, world size, workers, batch index)``: a resumed run skips the batches
already consumed (reading raw tar bytes only, no decoding; whole passes are skipped by arithmetic
when the manifest gives the sample counts) and sees exactly the batches an uninterrupted run
would. Because the stream never ends and the trainer draws the same number of steps on every rank,
no rank can run out of data before another (which would deadlock the global gather);
``epoch_batches`` (equal on every rank, from the manifest) only numbers the epochs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from avssl.config import Config
from avssl.data.crops import crop_sample
from avssl.data.shardset import DataError, ShardSet, check_manifest, resolve_shards

log = logging.getLogger(__name__)


def source_of(key: str) -> str:
    """A sample key's source video id: the key without its last dash-separated field (the clip index)."""
    return key.rsplit("-", 1)[0]


@dataclass
class Batch:
    """One training batch.

    audio:  float32[B, N] waveform at ``audio.sample_rate`` (not features)
    frames: uint8[B, T, 3, H, W] from the shards (a channels-last view: not contiguous), or float32 in
            [0, 1] once augmented; T = crop * fps (T = 0 when the run uses no video view)
    keys:   list of B sample keys ``{video_id}-{clip:04d}`` (``video_id`` may contain dashes)
    audio2: float32[B, N], a second, independent crop of the same clips' audio (two-crop runs), else None

    ``sources`` / ``source_ids()``: each row's source video, so the loss can mask same-source negatives.
    """

    audio: torch.Tensor
    frames: torch.Tensor
    keys: list[str]
    audio2: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, audio=move(self.audio), frames=move(self.frames), audio2=move(self.audio2))

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)``."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(self, audio=pin(self.audio), frames=pin(self.frames), audio2=pin(self.audio2))

    def __len__(self) -> int:
        return self.audio.shape[0]

    @property
    def sources(self) -> list[str]:
        """Each row's source video id (:func:`source_of` of its key)."""
        return [source_of(k) for k in self.keys]

    def source_ids(self) -> torch.Tensor:
        """``int64[B]``: a 63-bit hash of each row's source video id (equal ids <=> same source, up to
        hash collisions at ~1e-19 per pair), comparable across ranks."""
        digest = (hashlib.blake2b(s.encode(), digest_size=8).digest() for s in self.sources)
        return torch.tensor([int.from_bytes(d, "little") >> 1 for d in digest], dtype=torch.int64)


# ----------------------------------------------------------------------------------------- stream


def _seed_rng(*parts: int | str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts])


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory, so the batch
    crosses to the main process without the copy that pickling an ordinary tensor makes (as
    ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


def collate(
    items: list[tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]], frame_shape: tuple[int, int, int]
) -> Batch:
    """``[(key, audio[N], audio2[N] | None, frames[T, H, W, 3] | None), ...]`` -> :class:`Batch`.

    ``frame_shape`` is ``(T, H, W)``; frames are returned as ``uint8[B, T, 3, H, W]`` (``T = 0`` when no
    item carries frames), a channels-last view of ``uint8[B, T, H, W, 3]``: the layout conversion is
    left to the consumer (``.float()``, ``.reshape`` or ``.contiguous()``; on the GPU when training there).
    """
    def stack(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        out = _empty((len(arrays), *arrays[0].shape), dtype)
        np.stack(arrays, out=out.numpy())
        return out

    audio = stack([a for _, a, _, _ in items], torch.float32)
    audio2 = stack([a2 for _, _, a2, _ in items], torch.float32) if items[0][2] is not None else None
    if items[0][3] is None:
        frames = torch.zeros((len(items), 0, 3, frame_shape[1], frame_shape[2]), dtype=torch.uint8)
    else:
        frames = stack([f for _, _, _, f in items], torch.uint8).permute(0, 1, 4, 2, 3)
    return Batch(audio=audio, frames=frames, keys=[k for k, _, _, _ in items], audio2=audio2)


def _buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Shuffle a stream through a buffer of ``size`` items (``size <= 1``: unchanged)."""
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        i = int(rng.integers(len(buf)))
        buf[i], x = x, buf[i]
        yield x
    for i in rng.permutation(len(buf)):
        yield buf[i]


def _warn_and_continue(exn: Exception) -> bool:
    log.warning("skipping unreadable shard data: %s", exn)
    return True


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's endless, deterministic stream of :class:`Batch` (see the module docstring).

    Use through :func:`make_loader`. Batch ``g`` (counted from 0 on this rank) comes from slot
    ``g % workers``; the stream starts at batch ``start_batch``.
    """

    def __init__(
        self,
        shards: ShardSet,
        cfg: Config,
        *,
        rank: int,
        world_size: int,
        workers: int,
        seed: int,
        start_batch: int,
        audio_crops: int,
        with_frames: bool,
    ) -> None:
        super().__init__()
        self.shards, self.cfg = shards, cfg
        self.rank, self.world_size, self.workers = rank, world_size, max(1, workers)
        self.seed, self.start_batch = seed, start_batch
        self.audio_crops, self.with_frames = audio_crops, with_frames
        self.slots = self.world_size * self.workers
        # data.shuffle_buffer is per rank: the DataLoader interleaves its workers' buffers (raw samples
        # of ~0.5 MB for 10 s clips: 4096 per worker would hold GBs)
        self.buffer = max(1, cfg.data.shuffle_buffer // self.workers)
        self.split_shards = len(shards.urls) >= self.slots

    def _pass_plan(self, p: int, slot: int) -> tuple[list[int], bool]:
        """Shard indices read by ``slot`` in pass ``p`` and whether it keeps every ``slots``-th sample."""
        order = _seed_rng(self.seed, p, "shards").permutation(len(self.shards.urls)).tolist()
        return (order[slot :: self.slots], False) if self.split_shards else (order, True)

    def _pass_count(self, p: int, slot: int) -> int | None:
        if self.shards.counts is None:
            return None
        idx, every = self._pass_plan(p, slot)
        n = sum(self.shards.counts[i] for i in idx)
        return len(range(slot, n, self.slots)) if every else n

    def _raw(self, p: int, slot: int) -> Iterator[dict[str, Any]]:
        from avssl.data.shards import iter_samples

        idx, every = self._pass_plan(p, slot)
        for i, s in enumerate(iter_samples([self.shards.urls[i] for i in idx], handler=_warn_and_continue)):
            if not every or i % self.slots == slot:
                yield s

    def slot_samples(self, slot: int, skip_batches: int) -> Iterator[dict[str, Any]]:
        """Raw samples of ``slot`` (over all passes, shuffled), each tagged with its pass (``__pass__``),
        after skipping the first ``skip_batches`` batches.

        Batches never span two passes (:meth:`__iter__` drops each pass's last ``n % batch_size``
        samples), so pass ``p`` holds ``n_p // batch_size`` of them: whole passes are skipped by
        arithmetic when the manifest gives the counts, else by reading raw samples.
        """
        bsz = self.cfg.data.batch_size
        p, idle_passes = 0, 0
        while True:
            n = self._pass_count(p, slot)
            if n is not None and skip_batches >= n // bsz and n >= bsz:
                skip_batches, p = skip_batches - n // bsz, p + 1
                continue
            seen = 0
            rng = _seed_rng(self.seed, p, slot, "buffer")
            for sample in _buffer_shuffle(self._raw(p, slot), self.buffer, rng):
                seen += 1
                if seen > skip_batches * bsz:
                    yield {**sample, "__pass__": p}
            skip_batches -= min(skip_batches, seen // bsz)
            idle_passes = 0 if seen >= bsz else idle_passes + 1
            if idle_passes > len(self.shards.urls):
                raise DataError(
                    f"rank {self.rank} reader slot {slot} gets {seen} sample(s) per pass from "
                    f"{self.shards.urls[0]}..., fewer than data.batch_size={bsz}; lower data.batch_size or "
                    "data.num_workers, or add data"
                )
            p += 1

    def _item(self, sample: dict[str, Any]):
        from avssl.data.shards import sample_info

        a, c = self.cfg.audio, self.cfg
        info = sample_info(sample)
        if info.sample_rate != a.sample_rate:
            raise DataError(f"sample {info.key}: audio at {info.sample_rate} Hz, config expects {a.sample_rate} Hz")
        rng = _seed_rng(self.seed, sample["__pass__"], info.key, "crop")
        return crop_sample(sample, c.data.crop_seconds, rng, with_frames=self.with_frames, frame_size=c.video.size,
                           audio_crops=self.audio_crops)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.workers:
            raise RuntimeError("ShardStream must run with exactly the number of workers it was built for")
        # The DataLoader starts its round robin at worker 0; rotate so worker 0 serves batch start_batch.
        w = (worker + self.start_batch) % self.workers
        slot = self.rank * self.workers + w
        done = max(0, -(-(self.start_batch - w) // self.workers))  # batches g < start_batch with g % W == w
        bsz = self.cfg.data.batch_size
        size = self.cfg.video.size
        frame_shape = (int(round(self.cfg.data.crop_seconds * self.cfg.video.fps)), size, size)
        items, current = [], -1
        for sample in self.slot_samples(slot, done):
            if sample["__pass__"] != current:  # a batch never spans two passes: no clip twice in it
                items, current = [], sample["__pass__"]
            try:
                items.append(self._item(sample))
            except DataError:
                raise
            except Exception as e:
                log.warning("skipping sample %s from %s: %s", sample.get("__key__"), sample.get("__url__"), e)
                continue
            if len(items) == bsz:
                yield collate(items, frame_shape)
                items = []


def _worker_init(worker_id: int) -> None:
    """Loader workers leave SIGINT/SIGTERM to the trainer, which saves and then shuts them down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class ShardLoader:
    """Endless iterator of :class:`Batch` for one rank; ``epoch_batches`` is equal on every rank.

    Attributes: ``shards`` (:class:`ShardSet`), ``manifest`` (dict or None), ``epoch_batches``,
    ``batch_size``, ``start_batch``.
    """

    def __init__(self, stream: ShardStream, epoch_batches: int, pin_memory: bool) -> None:
        self.stream, self.epoch_batches = stream, epoch_batches
        self.shards, self.manifest = stream.shards, stream.shards.manifest
        self.batch_size, self.start_batch = stream.cfg.data.batch_size, stream.start_batch
        n = stream.cfg.data.num_workers
        self.loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=n, pin_memory=pin_memory,
            prefetch_factor=2 if n > 0 else None,  # whole batches per worker: memory = workers x 2 x batch
            worker_init_fn=_worker_init if n > 0 else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


def make_loader(
    data: str | Path,
    cfg: Config,
    *,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    audio_crops: int = 1,
    with_frames: bool | None = None,
    manifest: str | Path | None = None,
    pin_memory: bool = False,
) -> ShardLoader:
    """The training loader for ``rank`` of ``world_size``: resolve + check shards, build the stream.

    ``start_batch``: the number of batches this rank already consumed (resume).
    ``audio_crops``: 2 adds an independent second audio crop (``Batch.audio2``, two-crop runs).
    ``with_frames``: decode and crop frames (default: when ``"video"`` is in ``cfg.model.views``).
    Raises :class:`DataError` for a missing/empty shard set or a manifest that does not match ``cfg``.
    """
    shards = resolve_shards(data, manifest)
    if shards.manifest is not None:
        check_manifest(shards.manifest, cfg, where=str(data))
        total = int(shards.manifest.get("total_samples", sum(shards.counts or [0])))
        if total == 0:
            raise DataError(f"{data}: the shard set holds no samples; check the ingest log (manifest 'skipped')")
    elif cfg.data.epoch_batches <= 0:
        raise DataError(
            f"{data}: no manifest.json found, so the parameters cannot be checked and the epoch length is unknown; "
            "pass the shard folder, --manifest PATH, or set data.epoch_batches"
        )
    else:
        log.warning("%s: no manifest.json; ingest parameters are NOT checked against the config", data)
        total = 0
    global_batch = cfg.data.batch_size * world_size
    epoch_batches = cfg.data.epoch_batches or max(1, total // global_batch)
    if shards.manifest is not None and total < global_batch:  # a batch would have to hold a clip twice
        raise DataError(f"{data}: {total} samples are fewer than one global batch "
                        f"(data.batch_size={cfg.data.batch_size} x {world_size} process(es)); "
                        "lower data.batch_size or add data")
    if with_frames is None:
        with_frames = "video" in cfg.model.views
    stream = ShardStream(
        shards, cfg, rank=rank, world_size=world_size, workers=cfg.data.num_workers, seed=cfg.train.seed,
        start_batch=start_batch, audio_crops=audio_crops, with_frames=with_frames,
    )
    if not stream.split_shards:
        log.info("%d shard(s) < %d reader slots: every slot reads all shards and keeps its share of samples",
                 len(shards.urls), stream.slots)
    return ShardLoader(stream, epoch_batches, pin_memory)
