import io
import json
import tarfile

import numpy as np
import pytest

from avssl.shards import FRAME_FORMATS, Clip, ShardError, decode_sample, encode_sample, read_manifest


def _clip(frames=6, seconds=0.6, rate=16000, size=32):
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    # smooth images (JPEG/H.264 are lossy on noise, near exact on gradients)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 128)], -1).astype(np.uint8)
    imgs = np.stack([np.roll(base, 2 * i, axis=1) for i in range(frames)])
    return Clip("vid_a-0003", audio, rate, imgs, 10.0, {"source": "a.mp4", "start": 30.0, "duration": seconds,
                                                           "labels": ["dog"], "noise": float(rng.random())})


@pytest.mark.parametrize("fmt", FRAME_FORMATS)
def test_round_trip_and_determinism(fmt):
    clip = _clip()
    sample = encode_sample(clip, fmt, 90)
    assert sample == encode_sample(clip, fmt, 90)  # same clip, same bytes
    assert sample["__key__"] == clip.key and set(sample) >= {"flac", "json"}
    back = decode_sample(sample)
    assert back.key == clip.key and back.sample_rate == 16000 and back.fps == 10.0
    assert back.meta == clip.meta
    np.testing.assert_allclose(back.audio, clip.audio, atol=1.0 / 32768 + 1e-7)
    assert back.frames.shape == clip.frames.shape and back.frames.dtype == np.uint8
    err = np.abs(back.frames.astype(int) - clip.frames.astype(int)).mean()
    assert err == 0 if fmt == "raw" else err < 6  # lossy: 4:2:0 chroma on sharp edges


def test_audio_only_sample_and_webdataset_reader(tmp_path):
    wds = pytest.importorskip("webdataset")
    clip = _clip()
    clip.frames = np.zeros((0, 32, 32, 3), np.uint8)
    samples = [encode_sample(clip), encode_sample(_clip(), "jpeg")]
    samples[1]["__key__"] = "vid_b-0000"
    samples[1]["json"] = samples[1]["json"].replace(b"vid_a-0003", b"vid_b-0000")
    with tarfile.open(tmp_path / "000000.tar", "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    got = [decode_sample(s) for s in wds.WebDataset(str(tmp_path / "000000.tar"), shardshuffle=False)]
    assert [c.key for c in got] == ["vid_a-0003", "vid_b-0000"]
    assert got[0].frames.shape == (0, 32, 32, 3) and got[1].frames.shape == (6, 32, 32, 3)


def test_bad_samples_and_keys():
    clip = _clip()
    with pytest.raises(ShardError, match="frame_format"):
        encode_sample(clip, "gif")
    clip.key = "a.b-0000"
    with pytest.raises(ShardError, match="must not contain"):
        encode_sample(clip)
    with pytest.raises(ShardError, match="no 'flac' member"):
        decode_sample({"__key__": "x", "json": b"{}"})


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="unreadable manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"version": 1}))
    with pytest.raises(ShardError, match="lacks params"):
        read_manifest(tmp_path)
    m = {"version": 1, "params": {}, "shards": [{"name": "000000.tar", "samples": 1, "seconds": 1.0}],
         "total_samples": 1, "total_hours": 1 / 3600, "skipped": []}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match="000000.tar is missing"):
        read_manifest(tmp_path)
    (tmp_path / "000000.tar").write_bytes(b"")
    assert read_manifest(tmp_path)["total_samples"] == 1
