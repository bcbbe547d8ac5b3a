import numpy as np
import pytest
import torch

from avssl.media.audio import AudioDecodeError, LogMel, load_audio, mel_filterbank, resample
from avssl.config import AudioConfig
from avssl.media.video import encode_audio, encode_video


def _tone(freq, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x, rate):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * rate / len(x)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"])
def test_load_audio_files(tmp_path, suffix):
    x = _tone(440, 1.0, 22050)
    path = encode_audio(tmp_path / f"a{suffix}", x, 22050)
    y = load_audio(path, 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 16000) < 16000 * 0.1  # codec padding is small
    assert abs(_dominant_freq(y, 16000) - 440) < 3
    assert 0.4 < np.abs(y).max() < 0.6


@pytest.mark.parametrize(
    "suffix,vcodec,acodec,rate",
    [(".mp4", "libx264", "aac", 16000), (".webm", "libvpx", "libopus", 48000), (".mkv", "libx264", "libopus", 16000),
     (".avi", "mpeg4", "libmp3lame", 16000), (".mov", "libx264", "aac", 44100), (".flv", "flv", "libmp3lame", 22050)],
)
def test_load_audio_of_videos(tmp_path, suffix, vcodec, acodec, rate):
    x = _tone(1000, 1.0, rate)
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    path = encode_video(tmp_path / f"v{suffix}", frames, 10, x, rate, vcodec, acodec)
    y = load_audio(path, 16000)
    assert abs(_dominant_freq(y, 16000) - 1000) < 5


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    bad = tmp_path / "pointer.mp4"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(AudioDecodeError, match="pointer.mp4"):
        load_audio(bad)
    silent = encode_video(tmp_path / "silent.mp4", np.zeros((5, 32, 32, 3), np.uint8), 10)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio(silent)


def test_resample_preserves_tone():
    x = _tone(300, 1.0, 44100)
    y = resample(x, 44100, 16000)
    assert len(y) == 16000 and abs(_dominant_freq(y, 16000) - 300) < 2


@pytest.mark.parametrize("window", ["hann", "hamming"])
def test_logmel_matches_librosa(window):
    librosa = pytest.importorskip("librosa")
    cfg = AudioConfig(window=window)
    x = np.random.default_rng(0).standard_normal((3, 12345)).astype(np.float32) * 0.1
    ours = LogMel(cfg)(torch.from_numpy(x)).numpy()
    ref_power = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window=window, center=True, pad_mode="constant", power=2.0,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
    )
    ref = np.log(ref_power + cfg.log_offset)
    assert ours.shape == ref.shape == (3, cfg.n_mels, 12345 // cfg.hop_length + 1)
    np.testing.assert_allclose(np.exp(ours), ref_power, rtol=1e-4, atol=1e-4 * ref_power.max())
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(16000, 512, 64, 60.0, 7800.0)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, fmin=60.0, fmax=7800.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-7)


def test_export_mode_equals_stft_and_is_batch_invariant():
    cfg = AudioConfig()
    x = torch.randn(4, 8000) * 0.1
    a = LogMel(cfg)(x)
    b = LogMel(cfg, export_mode=True)(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(LogMel(cfg)(x[1:2]), a[1:2], rtol=1e-5, atol=1e-5)


def test_logmel_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        LogMel()(torch.zeros(16000))


def test_wav_fast_path_equals_ffmpeg_decode(tmp_path):
    import av  # noqa: F401  (the reference decode goes through FFmpeg: same file, other suffix)

    x = _tone(523, 0.7, 8000) * np.linspace(0, 1, 5600, dtype=np.float32)
    wav = encode_audio(tmp_path / "a.wav", x, 8000)
    renamed = tmp_path / "a.bin"
    renamed.write_bytes(wav.read_bytes())
    np.testing.assert_allclose(load_audio(wav, 16000), load_audio(renamed, 16000), atol=1e-6)


def test_media_suffix_sets_are_shared_and_consistent(tmp_path):
    """One suffix table (avssl.media.audio) and one media search (avssl.ingest.inputs.media_files), used by ingest,
    embed collections and task folders alike."""
    from avssl.media.audio import AUDIO_SUFFIXES, LIST_SUFFIXES, MEDIA_SUFFIXES, VIDEO_SUFFIXES
    from avssl.ingest.inputs import media_files
    from avssl.evaluate.tasks import load_task

    assert not AUDIO_SUFFIXES & VIDEO_SUFFIXES and MEDIA_SUFFIXES == AUDIO_SUFFIXES | VIDEO_SUFFIXES
    assert not MEDIA_SUFFIXES & LIST_SUFFIXES and all(s == s.lower() and s.startswith(".") for s in MEDIA_SUFFIXES)
    for name in ("a.WAV", "b.aiff", "c.mp4", "d.ts", ".hidden.wav", "e.txt", "f.npz"):
        (tmp_path / "cls" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "cls" / name).touch()
    assert [p.name for p in media_files(tmp_path)] == ["a.WAV", "b.aiff", "c.mp4", "d.ts"]
    for split in ("train", "test"):  # a folder task finds the same files
        for name in ("a.WAV", ".hidden.wav", "e.txt"):
            (tmp_path / "task" / split / "cls" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "task" / split / "cls" / name).touch()
    task = load_task(f"folder:{tmp_path / 'task'}")
    assert [ex.path.name for ex in task.examples] == ["a.WAV", "a.WAV"]


def test_pcm_to_float_scales_integer_pcm():
    from avssl.media.audio import pcm_to_float

    np.testing.assert_array_equal(pcm_to_float(np.array([-32768, 0, 16384], np.int16)), [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(pcm_to_float(np.array([0, 128, 192], np.uint8)), [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(pcm_to_float(np.array([-(2**31), 2**30], np.int32)), [-1.0, 0.5])
    x = np.array([0.25, -2.0], np.float64)
    assert pcm_to_float(x).dtype == np.float32 and np.array_equal(pcm_to_float(x), x)


def test_stft_stays_out_of_compiled_graphs_and_eager_never_imports_dynamo():
    import subprocess
    import sys

    code = ("import sys, torch, avssl.embed.collection, avssl.media.audio as a; a.LogMel()(torch.randn(1, 4000)); "
            "print('torch._dynamo' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
    ops = []

    def backend(gm, inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    m, x = LogMel(), torch.randn(2, 4000)
    torch.testing.assert_close(torch.compile(m, backend=backend)(x), m(x), rtol=0, atol=0)
    assert ops and "matmul" in " ".join(ops) and not any("stft" in o for o in ops)  # the STFT ran outside
