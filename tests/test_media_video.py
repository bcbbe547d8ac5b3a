"""Alignment proof: generated videos whose colour and tone change at known instants."""

import numpy as np
import pytest

from avssl.media.video import MediaError, _encode_audio_stream, decode_video, encode_video

RATE = 16000
CHANGES = [0.0, 0.73, 1.41, 2.26]  # seconds at which colour and tone change
COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 230]], np.uint8)
TONES = [400.0, 800.0, 1600.0, 3200.0]
SECONDS = 3.0


def _segment(t):
    return int(np.searchsorted(CHANGES, np.asarray(t) + 1e-9, side="right") - 1)


def _source_audio(seconds=SECONDS):
    t = np.arange(int(seconds * RATE)) / RATE
    freq = np.array(TONES)[np.searchsorted(CHANGES, t, side="right") - 1]
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    return (0.5 * np.sin(phase)).astype(np.float32)


def _source_frames(times, h=48, w=64):
    frames = np.empty((len(times), h, w, 3), np.uint8)
    for i, t in enumerate(times):
        frames[i] = COLOURS[_segment(t)]
    return frames


def _colour_index(img):
    return int(np.argmin(np.abs(COLOURS.astype(int) - img.reshape(-1, 3).mean(0)).sum(1)))


def _lag_seconds(decoded, reference):
    """Lag of ``decoded`` against ``reference`` (positive: decoded is late), by cross-correlation."""
    n = min(len(decoded), len(reference))
    spec = np.fft.rfft(decoded[:n], 2 * n) * np.conj(np.fft.rfft(reference[:n], 2 * n))
    corr = np.fft.irfft(spec)
    lag = int(np.argmax(corr))
    return (lag if lag < n else lag - 2 * n) / RATE


def _check_alignment(dec, src_fps, audio_start=0.0, video_start=0.0):
    """Frame at t shows the colour of t (within one source frame) and the audio at t is the tone of t."""
    assert dec.frames.shape[1:] == (16, 16, 3) and dec.audio.dtype == np.float32
    assert len(dec.frames) == int(np.ceil(dec.duration * 10 - 1e-6)) and len(dec.audio) == round(dec.duration * RATE)
    for i, img in enumerate(dec.frames):
        t = i / 10
        seen = _colour_index(img)
        src_t = max(t - video_start, 0.0)  # before the first frame: the first frame holds
        assert seen in (_segment(src_t), _segment(max(src_t - 1 / src_fps, 0))), f"frame {i} at {t:.2f} s"
    ref = np.concatenate([np.zeros(int(round(audio_start * RATE)), np.float32), _source_audio()])
    assert abs(_lag_seconds(dec.audio, ref)) <= 1.5e-3  # audio on the same clock to ~1 ms
    for t in np.arange(0.05, dec.duration - 0.05, 0.1):  # and its tone at t is the tone of t
        src_t = t - audio_start
        if src_t < 0.03 or min(abs(src_t - c) for c in CHANGES) < 0.03:
            continue
        win = dec.audio[int((t - 0.025) * RATE) : int((t + 0.025) * RATE)]
        freq = np.argmax(np.abs(np.fft.rfft(win * np.hanning(len(win))))) * RATE / len(win)
        assert abs(freq - TONES[_segment(src_t)]) < 40, f"tone at {t:.2f} s"


@pytest.mark.parametrize(
    "suffix,vcodec,acodec,src_fps",
    [(".mp4", "libx264", "aac", 25), (".webm", "libvpx", "libopus", 30), (".mkv", "libx264", "libmp3lame", 24),
     (".mov", "mpeg4", "aac", 15)],
)
def test_alignment_codecs(tmp_path, suffix, vcodec, acodec, src_fps):
    times = np.arange(int(SECONDS * src_fps)) / src_fps
    path = encode_video(tmp_path / f"v{suffix}", _source_frames(times), src_fps, _source_audio(), RATE, vcodec, acodec)
    dec = decode_video(path, RATE, 10.0, 16)
    assert dec.duration == pytest.approx(SECONDS, abs=1 / src_fps)
    _check_alignment(dec, src_fps)


def test_alignment_variable_frame_rate(tmp_path):
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.01, 0.09, 200))
    times = np.concatenate([[0.0], times[times < SECONDS]])
    path = encode_video(tmp_path / "vfr.mkv", _source_frames(times), 25, _source_audio(), RATE, frame_times=times)
    dec = decode_video(path, RATE, 10.0, 16)
    gaps = np.diff(times).max()
    for i, img in enumerate(dec.frames):  # displayed frame = last frame with time <= t
        shown = times[np.searchsorted(times, i / 10 + 1e-6, side="right") - 1]
        assert _colour_index(img) == _segment(shown)
    _check_alignment(dec, 1 / gaps)


def test_alignment_different_stream_starts(tmp_path):
    # audio starts 0.4 s after the video: the decoded audio is silent until then, then on time
    times = np.arange(75) / 25
    path = encode_video(tmp_path / "late.mp4", _source_frames(times), 25, _source_audio(2.5), RATE, audio_start=0.4)
    dec = decode_video(path, RATE, 10.0, 16)
    assert np.abs(dec.audio[: int(0.38 * RATE)]).max() < 0.01  # (AAC pre-echo just before the onset)
    assert np.abs(dec.audio[int(0.45 * RATE) : int(0.6 * RATE)]).max() > 0.3
    _check_alignment(dec, 25, audio_start=0.4)


def test_segment_decode_matches_full_decode(tmp_path):
    times = np.arange(75) / 25
    path = encode_video(tmp_path / "v.mp4", _source_frames(times), 25, _source_audio(), RATE)
    full = decode_video(path, RATE, 10.0, 16)
    seg = decode_video(path, RATE, 10.0, 16, start=1.2, duration=1.0)
    assert seg.duration == 1.0 and len(seg.audio) == RATE and len(seg.frames) == 10
    np.testing.assert_array_equal(seg.frames, full.frames[12:22])
    np.testing.assert_allclose(seg.audio, full.audio[int(1.2 * RATE) : int(2.2 * RATE)], atol=1e-4)


def _quadrants(h, w):
    """Top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2 :] = COLOURS[0], COLOURS[1]
    img[h // 2 :, : w // 2], img[h // 2 :, w // 2 :] = COLOURS[2], COLOURS[3]
    return img


def _corners(img):
    q = img.shape[0] // 4
    return [_colour_index(img[:q, :q]), _colour_index(img[:q, -q:]), _colour_index(img[-q:, :q]), _colour_index(img[-q:, -q:])]


@pytest.mark.parametrize("h,w", [(48, 64), (64, 36), (38, 50), (50, 38)])
def test_scale_short_side_and_centre_crop(tmp_path, h, w):
    # a centred square of quadrants inside a grey frame: the crop keeps exactly that square
    img = np.full((h, w, 3), 128, np.uint8)
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    img[y0 : y0 + s, x0 : x0 + s] = _quadrants(s, s)
    path = encode_video(tmp_path / "v.mp4", np.stack([img] * 5), 10, _source_audio(0.5), RATE)
    dec = decode_video(path, RATE, 10.0, 16)
    assert dec.frames.shape == (5, 16, 16, 3)
    assert _corners(dec.frames[0]) == [0, 1, 2, 3]
    assert np.abs(dec.frames[0].astype(int) - 128).min(axis=-1).max() > 60  # no grey border left


@pytest.mark.parametrize("rotation,expected", [(90, [1, 3, 0, 2]), (-90, [2, 0, 3, 1]), (180, [3, 2, 1, 0])])
def test_rotation_metadata(tmp_path, rotation, expected):
    path = encode_video(tmp_path / "r.mp4", np.stack([_quadrants(32, 32)] * 5), 10, _source_audio(0.5), RATE,
                        rotation=rotation)
    dec = decode_video(path, RATE, 10.0, 16)
    assert _corners(dec.frames[0]) == expected  # shown as a player shows it: rotated counter-clockwise


def test_media_errors(tmp_path):
    (tmp_path / "e.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="zero-byte") as e:
        decode_video(tmp_path / "e.mp4")
    assert e.value.reason == "empty"
    with pytest.raises(MediaError) as e:
        decode_video(tmp_path / "nothing.mp4")
    assert e.value.reason == "unreadable"
    (tmp_path / "t.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(MediaError) as e:
        decode_video(tmp_path / "t.mp4")
    assert e.value.reason == "corrupt"


def _encode_with_b_frames(path, vcodec, fps=30, seconds=3.0):
    """A video whose every frame differs (moving noise), encoded with B-frames (non-reference frames)."""
    import av

    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (72, 128, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(vcodec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = 128, 72, "yuv420p"
        if vcodec == "libx264":
            stream.options = {"preset": "ultrafast", "x264-params": "bframes=3:b-adapt=0:b-pyramid=none"}
        else:
            stream.codec_context.max_b_frames = 2
        stream.codec_context.thread_count = 1
        astream = container.add_stream("aac", rate=RATE, layout="mono")
        for i in range(int(fps * seconds)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 3 * i, axis=1), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        _encode_audio_stream(container, astream, _source_audio(seconds), RATE)


@pytest.mark.parametrize(
    "vcodec, suffix", [("libx264", ".mp4"), ("mpeg4", ".mp4"), ("mpeg4", ".avi"), ("libx264", ".ts"), ("mpeg2video", ".mkv")]
)
@pytest.mark.parametrize("fps", [10.0, 7.5, 30.0])
def test_skipped_frames_change_nothing(tmp_path, monkeypatch, vcodec, suffix, fps):
    """Frames the sampler cannot pick are not decoded; the output equals decoding every frame."""
    from avssl.media import align
    path = tmp_path / f"b{suffix}"
    _encode_with_b_frames(path, vcodec)
    skipped = []
    before = align.FrameSkipper.before

    def counting(self, packet):
        before(self, packet)
        skipped.append(self.skipping)

    monkeypatch.setattr(align.FrameSkipper, "before", counting)
    fast = [decode_video(path, RATE, fps, 16, threads=t) for t in (1, 0)]
    monkeypatch.setattr(align.FrameSkipper, "before", lambda self, packet: None)
    full = decode_video(path, RATE, fps, 16, threads=1)
    for dec in fast:
        assert dec.duration == full.duration and np.array_equal(dec.frames, full.frames)
        assert np.array_equal(dec.audio, full.audio)
    assert len(full.frames) == int(np.ceil(full.duration * fps - 1e-6)) and full.frames.std() > 10
    if fps < 30:
        assert sum(skipped) > 0.2 * len(skipped)  # most B-frames fall between the picked times
