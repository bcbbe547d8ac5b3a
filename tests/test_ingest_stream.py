"""Streaming ingest: clips come out of ``ClipReader`` exactly as slices of a whole-file decode, and the
memory ingest needs does not grow with the length of the video."""

import tracemalloc

import numpy as np
import pytest

from avssl.config import load_config
from avssl.ingest.run import ingest
from avssl.media.video import ClipReader, decode_video, encode_video, frame_count

RATE, FPS = 16000, 10


def _video(path, seconds, rate=48000, fps=25, **kw):
    n = int(round(seconds * fps))
    yy, xx = np.mgrid[0:24, 0:32]
    frames = np.stack([np.stack([(xx + 5 * t) % 256, (yy + 3 * t) % 256, np.full_like(xx, (7 * t) % 256)], -1)
                       for t in range(n)]).astype(np.uint8)  # fmt: skip
    audio = (0.3 * np.random.default_rng(n).standard_normal(int(seconds * rate))).astype(np.float32)
    return encode_video(path, frames, fps, audio, rate, **kw)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {
        "short": _video(root / "short.mp4", 4.0),
        "long": _video(root / "long.mp4", 40.0),
        "late": _video(root / "late.mp4", 13.3, rate=44100, audio_start=0.4),  # audio starts after the video
        "webm": _video(root / "w.webm", 12.0, vcodec="libvpx", acodec="libopus"),
        "same_rate": _video(root / "s.mkv", 9.1, rate=RATE),  # no resampling
    }


@pytest.mark.parametrize("name", ["long", "late", "webm", "same_rate"])
@pytest.mark.parametrize("clip_seconds,start,duration", [(1.0, 0.0, None), (2.5, 0.0, None), (3.0, 6.3, 5.0)])
def test_clips_equal_slices_of_a_whole_decode(videos, name, clip_seconds, start, duration):
    whole = decode_video(videos[name], RATE, FPS, 16, start, duration)
    reader = ClipReader(videos[name], RATE, FPS, 16, clip_seconds, start, duration)
    clips = list(reader)
    n, f = int(round(clip_seconds * RATE)), int(round(clip_seconds * FPS))
    assert reader.duration == whole.duration and reader.info == whole.info
    assert len(clips) == -(-len(whole.audio) // n)
    for k, (audio, frames) in enumerate(clips):
        np.testing.assert_array_equal(audio, whole.audio[k * n : (k + 1) * n])  # bit-exact, not close
        np.testing.assert_array_equal(frames, whole.frames[k * f : k * f + frame_count(len(audio) / RATE, FPS)])


def _ingest_peak_bytes(path, out):
    """Peak of Python-traced memory (numpy buffers included) while ingesting ``path`` in this process."""
    cfg = load_config(None, ["video.size=16", "ingest.clip_seconds=1", "ingest.min_seconds=0.5", "ingest.samples_per_shard=4"])
    tracemalloc.start()
    try:
        manifest = ingest([path], out, cfg, workers=1, progress=False)
        return tracemalloc.get_traced_memory()[1], manifest
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_video_length(videos, tmp_path):
    _ingest_peak_bytes(videos["short"], tmp_path / "warm")  # one-time allocations (imports, caches)
    short, m_short = _ingest_peak_bytes(videos["short"], tmp_path / "short")
    long, m_long = _ingest_peak_bytes(videos["long"], tmp_path / "long")
    assert (m_short["total_samples"], m_long["total_samples"]) == (4, 40)
    # A whole-file decode of the 40 s video holds its 48 kHz audio alone three times over (> 20 MB);
    # streaming holds about one clip, so 36 s more video may not cost even 2 MB more.
    assert long - short < 2_000_000, (short, long)
