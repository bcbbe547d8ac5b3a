"""load_audio's bulk frame conversion (DecodedFrames) equals the frame-by-frame reference
(frame_to_mono + place_on_timeline), sample for sample, on generated files and on synthetic frame streams
with gaps, overlaps, missing timestamps and a format change."""

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from avssl.media.audio import (AudioDecodeError, DecodedFrames, _chunks_end, frame_to_mono, load_audio,
                         place_on_timeline, resample, stream_end_time)
from avssl.media.video import encode_audio


def _reference_load(path, sample_rate):
    """The per-frame decode load_audio used before the bulk path: frame_to_mono and place_on_timeline."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [(f.time, frame_to_mono(f)) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate or stream.rate
        stream_end = stream_end_time(stream)
    chunks = [(t, x) for t, x in chunks if len(x)]
    begin = chunks[0][0] if chunks[0][0] is not None else 0.0
    end = _chunks_end([(t, len(x)) for t, x in chunks], rate, begin)
    end = min(end, stream_end) if stream_end is not None else end
    return resample(place_on_timeline(chunks, rate, begin, end), int(rate), sample_rate)


def _stereo(path, codec, rate, fmt=None):
    """A 0.8 s stereo file (different content per channel) written with PyAV."""
    import av

    t = np.arange(int(0.8 * rate)) / rate
    x = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t + 1)]).astype(np.float32)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        sample_fmt = stream.codec_context.codec.audio_formats[0].name
        for k in range(0, x.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, k : k + 1024]), format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = k
            resampler = av.AudioResampler(format=sample_fmt, layout="stereo", rate=rate)
            for f in resampler.resample(frame):
                container.mux(stream.encode(f))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("suffix", [".opus", ".mp3", ".m4a", ".ogg"])
def test_bulk_decode_equals_per_frame_reference_mono(tmp_path, suffix):
    rng = np.random.default_rng(0)
    x = (0.2 * rng.standard_normal(int(1.3 * 22050))).astype(np.float32)
    path = encode_audio(tmp_path / f"a{suffix}", x, 22050)
    for rate in (16000, 22050):
        got, ref = load_audio(path, rate), _reference_load(path, rate)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name,codec,fmt", [("s.m4a", "aac", None), ("s.mp3", "libmp3lame", None),
                                            ("s.bin", "pcm_s16le", "wav")])  # .bin: FFmpeg, packed s16
def test_bulk_decode_equals_per_frame_reference_stereo(tmp_path, name, codec, fmt):
    path = _stereo(tmp_path / name, codec, 44100, fmt)
    got, ref = load_audio(path, 16000), _reference_load(path, 16000)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert np.abs(got).max() > 0.1


def _fake_frame(samples: np.ndarray, pts, fmt="fltp"):
    """A stand-in for a PyAV AudioFrame: ``samples`` float32[channels, n], stored as ``fmt`` (fltp, flt, s16)."""
    channels, n = samples.shape
    if fmt == "s16":
        data = [(samples.T * 32768).round().astype("<i2").tobytes() + b"\0" * 64]  # padded like FFmpeg's planes
        width, planar = 2, False
    elif fmt == "flt":
        data, width, planar = [samples.T.astype("<f4").tobytes() + b"\0" * 64], 4, False
    else:
        data, width, planar = [c.astype("<f4").tobytes() + b"\0" * 64 for c in samples], 4, True
    return SimpleNamespace(samples=n, pts=pts, time_base=Fraction(1, 1000), planes=data,
                           format=SimpleNamespace(name=fmt, bytes=width, is_planar=planar),
                           layout=SimpleNamespace(nb_channels=channels),
                           time=None if pts is None else float(pts) / 1000)


def _bulk_vs_reference(frames, rate, stream_end=None):
    decoded = DecodedFrames((1, 1000))
    for f in frames:
        decoded.add(f)
    closed = [s for s in decoded.segments if s[2] is None]  # multi-channel runs already converted to mono
    assert len(closed) >= (sum(f.samples for f in frames) - 20) // DecodedFrames.CLOSE_SAMPLES
    chunks = [(f.time, frame_to_mono(f)) for f in frames if f.samples]
    begin = chunks[0][0] if chunks[0][0] is not None else 0.0
    end = _chunks_end([(t, len(x)) for t, x in chunks], rate, begin)
    end = min(end, stream_end) if stream_end is not None else end
    return decoded.mono_on_timeline(rate, stream_end), place_on_timeline(chunks, rate, begin, end)


@pytest.mark.parametrize("close", [None, 30])  # 30: stereo runs are converted to mono every 30 samples
@pytest.mark.parametrize("case", ["contiguous", "jitter", "gap", "overlap", "no-pts", "format-change", "trim"])
def test_decoded_frames_equal_timeline_placement(case, close, monkeypatch):
    if close:
        monkeypatch.setattr(DecodedFrames, "CLOSE_SAMPLES", close)
    rate, rng = 1000, np.random.default_rng(1)  # time base 1/1000 s: pts = sample index
    sizes = [20, 20, 0, 20, 13, 20]
    pts, fmts, stream_end = np.concatenate([[5], 5 + np.cumsum(sizes)[:-1]]).tolist(), ["fltp"] * 6, None
    if case == "jitter":
        pts[3] += 1  # within the 1 ms tolerance: laid end to end
    elif case == "gap":
        pts[4] += 7
    elif case == "overlap":
        pts[5] -= 6
    elif case == "no-pts":
        pts[3] = None
    elif case == "format-change":
        fmts = ["fltp", "fltp", "fltp", "s16", "s16", "flt"]
    elif case == "trim":
        stream_end = 0.005 + 0.070
    frames = [_fake_frame((0.5 * rng.standard_normal((2, n))).astype(np.float32), p, f)
              for n, p, f in zip(sizes, pts, fmts)]
    got, ref = _bulk_vs_reference(frames, rate, stream_end)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    if case == "gap":
        assert np.all(got[40 + 20 : 40 + 27] == 0)


def test_frame_to_mono_averages_channels_and_scales_pcm():
    x = np.array([[0.5, -0.25, 0.0], [0.25, 0.25, 1.0 - 2**-15]], dtype=np.float32)
    for fmt in ("fltp", "flt", "s16"):
        np.testing.assert_allclose(frame_to_mono(_fake_frame(x, 0, fmt)), x.mean(axis=0), atol=1e-4)
    assert frame_to_mono(_fake_frame(np.zeros((1, 0), np.float32), 0)).shape == (0,)


def test_stream_without_samples_is_an_error(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"RIFF")
    with pytest.raises(AudioDecodeError, match="empty.bin"):
        load_audio(path)


def test_in_order_keeps_order_bounds_look_ahead_and_stops_early():
    import threading

    from avssl.embed.collection import in_order

    started, fifth_done = [], threading.Event()

    def last_first(i):  # item 0 finishes only after item 5: the results must still come in input order
        started.append(i)
        if i == 0:
            assert fifth_done.wait(30)
        if i == 5:
            fifth_done.set()
        return i * i

    assert list(in_order(last_first, list(range(20)), 3)) == [i * i for i in range(20)]
    assert list(in_order(lambda i: -i, list(range(5)), 0)) == [0, -1, -2, -3, -4]
    started.clear()
    early = in_order(started.append, list(range(50)), 2)
    next(early)
    early.close()  # nothing beyond the look-ahead (2 * workers items) starts, and no thread is left behind
    assert set(started) <= {0, 1, 2, 3}
    assert not [t for t in threading.enumerate() if t.name.startswith("avssl-embed")]
