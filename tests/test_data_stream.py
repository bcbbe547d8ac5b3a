"""The streaming shard loader: aligned crops, determinism, resume skipping, rank splits, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from avssl.config import load_config
from avssl.data.crops import crop_clip, crop_sample
from avssl.data.stream import Batch, DataError, make_loader
from avssl.data.shards import Clip, decode_sample, encode_sample

SR, FPS, SIZE, SECONDS = 16000, 8.0, 16, 2.0


def planted_clip(i: int, num_classes: int = 4, seconds: float = SECONDS, sr: int = SR, fps: float = FPS,
                 size: int = SIZE, seed: int = 0) -> Clip:
    """Clip ``i`` of class ``i % num_classes``: a class tone whose amplitude rises linearly with time
    (so an audio crop tells where it starts) and frames of a class colour whose brightness gives the
    frame index (frame f has red channel = f)."""
    c = i % num_classes
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng([seed, i]).standard_normal(len(t))
    audio = (0.2 * np.sin(2 * np.pi * 300 * (c + 1) * t) + 0.01 * noise).astype(np.float32)
    frames = np.zeros((int(round(seconds * fps)), size, size, 3), np.uint8)
    frames[..., 0] = np.arange(len(frames))[:, None, None]
    frames[..., 1 + c % 2] = 40 + 50 * c
    return Clip(key=f"vid{i:04d}-0000", audio=audio, sample_rate=sr, frames=frames, fps=fps, meta={"label": c})


def write_shards(folder: Path, clips: list[Clip], per_shard: int, *, sr: int = SR, fps: float = FPS,
                 size: int = SIZE, clip_seconds: float = SECONDS, frame_format: str = "raw",
                 audio_format: str = "flac") -> Path:
    """Write ``clips`` as WebDataset shards with ``avssl.data.shards.encode_sample`` plus a contract manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(clips), per_shard):
        name = f"{s // per_shard:06d}.tar"
        part = clips[s : s + per_shard]
        with wds.TarWriter(str(folder / name)) as w:
            for clip in part:
                w.write(encode_sample(clip, frame_format=frame_format, audio_format=audio_format))
        shards.append({"name": name, "samples": len(part), "seconds": sum(len(c.audio) / sr for c in part)})
    manifest = {
        "version": 1,
        "params": {"sample_rate": sr, "fps": fps, "size": size, "clip_seconds": clip_seconds, "min_seconds": 1.0,
                   "frame_format": frame_format, "audio_format": audio_format},
        "shards": shards,
        "total_samples": len(clips),
        "total_hours": sum(s["seconds"] for s in shards) / 3600,
        "skipped": [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def data_config(*overrides: str):
    base = [f"audio.sample_rate={SR}", f"video.fps={FPS}", f"video.size={SIZE}", "data.crop_seconds=1.0",
            "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=8"]
    return load_config("tiny", base + list(overrides))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"), [planted_clip(i) for i in range(24)], per_shard=6)


def test_crop_is_aligned_and_padded():
    audio = (np.arange(SR * 2) / SR).astype(np.float32)  # the value is the time in seconds
    frames = np.arange(16, dtype=np.uint8)[:, None, None, None].repeat(3, axis=3)  # frame f has value f
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, f = crop_clip(audio, frames, 1.0, SR, FPS, rng)
        assert a.shape == (SR,) and f.shape == (8, 1, 1, 3)
        f0 = int(f[0, 0, 0, 0])
        np.testing.assert_allclose(a[0], f0 / FPS, atol=1e-6)  # the audio starts where frame f0 is shown
        assert (f[:, 0, 0, 0] == np.arange(f0, f0 + 8)).all()
    a, f = crop_clip(audio[: SR // 2], frames[:4], 1.0, SR, FPS, rng)  # a 0.5 s clip: padded
    assert a.shape == (SR,) and (a[SR // 2 :] == 0).all() and (f[:, 0, 0, 0] == [0, 1, 2, 3, 3, 3, 3, 3]).all()
    a, f = crop_clip(audio, None, 0.5, SR, FPS, rng)  # audio only: any start sample
    assert a.shape == (SR // 2,) and f is None and np.allclose(np.diff(a), 1 / SR, atol=1e-6)


def test_batches_carry_aligned_crops(shards):
    loader = make_loader(shards, data_config())
    batch = next(iter(loader))
    assert isinstance(batch, Batch) and len(batch) == 4
    assert batch.audio.dtype == torch.float32 and batch.audio.shape == (4, SR)
    assert batch.frames.dtype == torch.uint8 and batch.frames.shape == (4, 8, 3, SIZE, SIZE)
    for i, key in enumerate(batch.keys):
        clip = planted_clip(int(key[3:7]))
        f0 = int(batch.frames[i, 0, 0, 0, 0])
        assert (batch.frames[i, :, 0, 0, 0] == torch.arange(f0, f0 + 8, dtype=torch.uint8)).all()
        start = int(round(f0 / FPS * SR))
        np.testing.assert_allclose(batch.audio[i].numpy(), clip.audio[start : start + SR], atol=1 / 32768)
    assert loader.epoch_batches == 24 // 4


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_is_deterministic_and_resumes_exactly(shards, workers):
    cfg = data_config(f"data.num_workers={workers}")
    full = list(islice(make_loader(shards, cfg), 9))  # crosses a pass over the 24 clips
    again = list(islice(make_loader(shards, cfg), 9))
    resumed = list(islice(make_loader(shards, cfg, start_batch=5), 4))
    for a, b in zip(full, again):
        assert a.keys == b.keys and torch.equal(a.audio, b.audio) and torch.equal(a.frames, b.frames)
    for a, b in zip(full[5:], resumed):
        assert a.keys == b.keys and torch.equal(a.audio, b.audio) and torch.equal(a.frames, b.frames)
    first_pass = [k for b in full[:6] for k in b.keys]
    assert sorted(first_pass) == sorted(planted_clip(i).key for i in range(24))  # one pass = every clip once
    assert first_pass != sorted(first_pass)  # shuffled


@pytest.mark.parametrize("workers", [0, 2])
def test_storage_formats_give_the_batches_of_their_frames(tmp_path, workers):
    """Two loads of the same shards give identical batches; raw frames with PCM or FLAC audio give the same
    batches (both are 16-bit); JPEG frames give the same keys and audio, frames within JPEG's error."""
    clips = [planted_clip(i) for i in range(12)]
    cfg = data_config(f"data.num_workers={workers}")
    runs = {}
    for frames, audio in (("raw", "pcm"), ("raw", "flac"), ("jpeg", "flac"), ("jpeg", "pcm")):
        folder = write_shards(tmp_path / f"{frames}-{audio}", clips, per_shard=4, frame_format=frames,
                              audio_format=audio)
        runs[frames, audio] = list(islice(make_loader(folder, cfg), 5))
        again = list(islice(make_loader(folder, cfg), 5))
        for a, b in zip(runs[frames, audio], again):
            assert a.keys == b.keys and torch.equal(a.audio, b.audio) and torch.equal(a.frames, b.frames)
    for a, b, c, d in zip(runs["raw", "pcm"], runs["raw", "flac"], runs["jpeg", "flac"], runs["jpeg", "pcm"]):
        assert a.keys == b.keys == c.keys == d.keys
        assert torch.equal(a.audio, b.audio) and torch.equal(a.audio, c.audio) and torch.equal(a.frames, b.frames)
        assert torch.equal(c.frames, d.frames)
        assert (a.frames.float() - c.frames.float()).abs().mean() < 3  # JPEG is lossy


@pytest.mark.parametrize("shards_per_rank", [2, 0])  # 4 shards (split by shard) / 1 shard (split by sample)
def test_ranks_split_the_data_and_agree_on_length(tmp_path, shards_per_rank):
    clips = [planted_clip(i) for i in range(16)]
    folder = write_shards(tmp_path / "s", clips, per_shard=4 if shards_per_rank else 16)
    cfg = data_config("data.batch_size=2")
    loaders = [make_loader(folder, cfg, rank=r, world_size=2) for r in range(2)]
    assert loaders[0].epoch_batches == loaders[1].epoch_batches == 16 // (2 * 2)
    seen = [[k for b in islice(ld, 4) for k in b.keys] for ld in loaders]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(c.key for c in clips)


def test_two_crops_come_from_the_same_clip(shards):
    batch = next(iter(make_loader(shards, data_config("data.crop_seconds=0.5", "model.views=[spec]"), audio_crops=2)))
    assert batch.audio2.shape == batch.audio.shape == (4, SR // 2) and batch.frames.shape[1] == 0
    assert not torch.equal(batch.audio, batch.audio2)
    for i, key in enumerate(batch.keys):
        clip = planted_clip(int(key[3:7])).audio
        for crop in (batch.audio[i].numpy(), batch.audio2[i].numpy()):
            starts = [s for s in range(len(clip) - len(crop) + 1) if abs(clip[s] - crop[0]) < 1e-4
                      and np.allclose(clip[s : s + len(crop)], crop, atol=1 / 32768)]
            assert starts, f"a crop of {key} is not a window of its clip"


def test_sources_brace_pattern_and_pipe(shards):
    cfg = data_config()
    ref = next(iter(make_loader(shards, cfg)))
    brace = next(iter(make_loader(f"{shards}/{{000000..000003}}.tar", cfg)))  # manifest found beside the shards
    assert brace.keys == ref.keys and torch.equal(brace.audio, ref.audio)
    urls = "::".join(f"pipe:cat {shards}/{i:06d}.tar" for i in range(4))
    with pytest.raises(DataError, match="data.epoch_batches"):
        make_loader(urls, cfg)
    piped = next(iter(make_loader(urls, cfg, manifest=shards)))
    assert piped.keys == ref.keys


def test_errors_are_clear(shards, tmp_path):
    cfg = data_config()
    with pytest.raises(DataError, match="no such shard folder"):
        make_loader(tmp_path / "nope", cfg)
    with pytest.raises(DataError, match="manifest"):
        (tmp_path / "empty").mkdir()
        make_loader(tmp_path / "empty", cfg)
    with pytest.raises(DataError, match=r"fps=8.0 but the config has video.fps=10.0; train with --set video.fps=8.0"):
        make_loader(shards, data_config("video.fps=10"))
    with pytest.raises(DataError, match="video.size"):  # larger than the stored frames: cannot upscale
        make_loader(shards, data_config("video.size=64"))
    with pytest.raises(DataError, match="audio.sample_rate"):
        make_loader(shards, data_config("audio.sample_rate=22050"))
    with pytest.raises(DataError, match="crop_seconds"):
        make_loader(shards, data_config("data.crop_seconds=3.0"))
    with pytest.raises(DataError, match="do not exist"):
        make_loader(f"{tmp_path}/missing-{{0..3}}.tar", cfg)
    empty = write_shards(tmp_path / "zero", [], per_shard=1)
    with pytest.raises(DataError, match="empty|no samples"):
        make_loader(empty, cfg)


@pytest.mark.parametrize("fmt", ["jpeg", "raw"])
def test_windowed_crop_equals_crop_of_full_decode(fmt):
    """The loader decodes only the crop window; its values equal cropping the fully decoded clip (same rng)."""
    clips = [planted_clip(0), planted_clip(1, seconds=0.75)]  # a full clip and one shorter than the crop (padding)
    silent = planted_clip(2)
    silent.frames = np.zeros((0, SIZE, SIZE, 3), np.uint8)  # an audio-only sample
    for clip in clips + [silent]:
        sample = encode_sample(clip, frame_format=fmt)
        full = decode_sample(sample)
        for with_frames, crops in [(True, 1), (False, 1), (False, 2)]:
            for seed in range(6):
                key, a, a2, f = crop_sample(sample, 1.0, np.random.default_rng(seed), with_frames=with_frames,
                                            frame_size=SIZE, audio_crops=crops)
                rng = np.random.default_rng(seed)
                frames = (full.frames if len(full.frames) else np.zeros((0, SIZE, SIZE, 3), np.uint8)) if with_frames else None
                ra, rf = crop_clip(full.audio, frames, 1.0, SR, FPS, rng)
                assert key == clip.key
                np.testing.assert_array_equal(a, ra)
                if with_frames:
                    assert f.shape == (8, SIZE, SIZE, 3)
                    np.testing.assert_array_equal(f, rf)
                else:
                    assert f is None
                if crops == 2:
                    np.testing.assert_array_equal(a2, crop_clip(full.audio, None, 1.0, SR, FPS, rng)[0])
                else:
                    assert a2 is None


def test_loader_downscales_larger_shards(shards):
    """Shards ingested at 16 px serve an 8 px run: every frame is the 2x2 area mean of the stored one."""
    from avssl.data.crops import resize_frames

    frames = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    small = resize_frames(frames, SIZE // 2)
    ref = frames.reshape(3, SIZE // 2, 2, SIZE // 2, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert small.shape == (3, SIZE // 2, SIZE // 2, 3)
    assert np.abs(small.astype(np.float64) - ref).max() <= 1.0  # PIL rounds the mean
    assert resize_frames(frames, SIZE) is frames
    batch = next(iter(make_loader(shards, data_config(f"video.size={SIZE // 2}"))))
    assert batch.frames.shape[-2:] == (SIZE // 2, SIZE // 2)
    full = next(iter(make_loader(shards, data_config())))
    assert full.keys == batch.keys  # same stream, only the frame size differs
    pooled = full.frames.double().reshape(*full.frames.shape[:3], SIZE // 2, 2, SIZE // 2, 2).mean(dim=(4, 6))
    assert (pooled - batch.frames.double()).abs().max() <= 1.0


@pytest.mark.parametrize("workers", [0, 2])
def test_no_clip_twice_in_a_batch_across_passes(tmp_path, workers):
    """10 clips in batches of 4: every pass leaves a tail that must not be topped up from the next pass."""
    folder = write_shards(tmp_path / "s", [planted_clip(i) for i in range(10)], per_shard=5)
    cfg = data_config(f"data.num_workers={workers}", "model.views=[spec]")
    full = list(islice(make_loader(folder, cfg), 12))
    for b in full:
        assert len(set(b.keys)) == len(b.keys) == 4, b.keys
    per_pass = 2 if workers == 0 else 1  # batches per pass of each reader slot (10 // 4, or 5 // 4 per worker)
    first = [k for b in full[: per_pass * max(1, workers)] for k in b.keys]
    assert len(set(first)) == len(first)  # within a pass no clip repeats across batches either
    resumed = list(islice(make_loader(folder, cfg, start_batch=7), 5))  # mid-pass and whole passes skipped
    for a, b in zip(full[7:], resumed):
        assert a.keys == b.keys and torch.equal(a.audio, b.audio)
    with pytest.raises(DataError, match="fewer than one global batch"):
        make_loader(folder, data_config("data.batch_size=6"), world_size=2)


_TRUNCATING_RUN = """
import json, logging, os, sys
from itertools import islice
sys.path.insert(0, {tests!r})
logging.basicConfig(level=logging.WARNING)
from avssl.data import shardfile, shards
from avssl.data.stream import make_loader
from test_data_stream import data_config
shardfile.map_unsafe = lambda path: None  # map the shards whatever file system the test folder is on
read, cut = shards.iter_samples, []

def truncating(urls, handler=None):  # the first shard is truncated after its first sample was read (mapped)
    for s in read(urls, handler):
        yield s
        if not cut:  # (in the loader's worker process, when there is one)
            cut.append(urls[0])
            os.truncate(urls[0], 1024)

shards.iter_samples = truncating
batches = list(islice(make_loader({folder!r}, data_config("data.num_workers={workers}")), 6))
print(json.dumps([k for b in batches for k in b.keys]))
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_shard_truncated_while_mapped_is_skipped(tmp_path, workers):
    """A memory-mapped shard that shrinks during the run: touching the lost pages would be SIGBUS (the loader
    worker and the run die); the shard's remaining samples and the sample read before the cut are skipped with
    warnings, the run goes on with the other shards."""
    folder = write_shards(tmp_path / "s", [planted_clip(i) for i in range(18)], per_shard=6, audio_format="pcm")
    script = _TRUNCATING_RUN.format(tests=str(Path(__file__).parent), folder=str(folder), workers=workers)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping unreadable shard data" in proc.stderr and "truncated while being read" in proc.stderr
    assert "skipping sample" in proc.stderr and "truncated to 1024 bytes" in proc.stderr
    keys = json.loads(proc.stdout.splitlines()[-1])
    (cut,) = [p for p in folder.glob("*.tar") if p.stat().st_size == 1024]
    first = 6 * int(cut.stem)  # the truncated shard held clips first..first+5
    lost = {planted_clip(i).key for i in range(first, first + 6)}
    assert len(keys) == 6 * 4 and not lost & set(keys)


@pytest.mark.parametrize("workers", [0, 2])
def test_ordinary_reads_give_the_batches_of_the_map(shards, monkeypatch, workers):
    """Shards read with ordinary reads (network or FUSE file systems, mmap refused) give bit-identical batches."""
    from avssl.data import shardfile

    cfg = data_config(f"data.num_workers={workers}")
    monkeypatch.setattr(shardfile, "map_unsafe", lambda path: None)
    mapped = list(islice(make_loader(shards, cfg), 8))
    monkeypatch.setattr(shardfile, "map_unsafe", lambda path: "on a nfs4 file system (test)")
    read = list(islice(make_loader(shards, cfg), 8))
    for a, b in zip(mapped, read, strict=True):
        assert a.keys == b.keys and torch.equal(a.audio, b.audio) and torch.equal(a.frames, b.frames)
