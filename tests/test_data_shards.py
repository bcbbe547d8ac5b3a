import io
import json
import tarfile

import numpy as np
import pytest

from avssl.data.shards import (AUDIO_FORMATS, FRAME_FORMATS, Clip, ShardError, ShardWriter, decode_sample, encode_sample,
                          iter_samples, read_manifest, sample_info)  # fmt: skip


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


@pytest.mark.parametrize("audio_format", AUDIO_FORMATS)
@pytest.mark.parametrize("fmt", FRAME_FORMATS)
def test_round_trip_and_determinism(fmt, audio_format):
    clip = _clip()
    sample = encode_sample(clip, fmt, 90, audio_format)
    assert sample == encode_sample(clip, fmt, 90, audio_format)  # same clip, same bytes
    assert sample["__key__"] == clip.key and set(sample) >= {audio_format, "json"}
    back = decode_sample(sample)
    assert back.key == clip.key and back.sample_rate == 16000 and back.fps == 10.0
    assert back.meta == clip.meta
    np.testing.assert_allclose(back.audio, clip.audio, atol=1.0 / 32768 + 1e-7)
    # FLAC and PCM hold the same 16-bit samples: the decoded audio is identical
    np.testing.assert_array_equal(back.audio, decode_sample(encode_sample(clip, fmt, 90, "flac")).audio)
    assert back.frames.shape == clip.frames.shape and back.frames.dtype == np.uint8
    err = np.abs(back.frames.astype(int) - clip.frames.astype(int)).mean()
    assert err == 0 if fmt == "raw" else err < 6  # lossy: 4:2:0 chroma on sharp edges


def test_audio_only_sample_and_webdataset_reader(tmp_path):
    import webdataset as wds  # a core dependency: its absence is a failure, not a skip

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
    with pytest.raises(ShardError, match="audio_format"):
        encode_sample(_clip(), "raw", audio_format="wav")
    with pytest.raises(ShardError, match="no 'flac' member"):
        decode_sample({"__key__": "x", "json": b"{}"})
    with pytest.raises(ShardError, match="no 'pcm' member"):
        decode_sample({"__key__": "x", "json": b'{"audio_format": "pcm"}'})
    # a raw frame member that does not match its metadata, a PCM member of an odd byte count
    sample = encode_sample(_clip(), "raw", audio_format="pcm")
    meta = json.loads(sample["json"])
    for bad, match in ((dict(sample, npy=sample["npy"][:-1]), "bytes of frames"),
                       (dict(sample, json=json.dumps(dict(meta, frame_shape=[16, 64, 3])).encode()), "header"),
                       (dict(sample, npy=b"GIF89a" + sample["npy"][6:]), "not a .npy"),
                       (dict(sample, pcm=sample["pcm"][:-1]), "16-bit")):
        with pytest.raises(ShardError, match=match):
            decode_sample(bad)


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


WINDOWS = [(0.0, 0.3), (0.2, 0.3), (0.15, 0.2), (0.4, 0.5), (0.6, 0.3), (0.0, None), (0.25, None)]


@pytest.mark.parametrize("fmt, audio_format", [(f, "flac") for f in FRAME_FORMATS] + [("raw", "pcm")])
def test_window_equals_the_slice_of_a_full_decode(fmt, audio_format):
    clip = _clip(frames=6, seconds=0.6)
    sample = encode_sample(clip, fmt, 90, audio_format)
    full = decode_sample(sample)
    info = sample_info(sample)
    assert (info.key, info.sample_rate, info.num_samples, info.fps, info.num_frames, info.frame_shape) == (
        clip.key, 16000, 9600, 10.0, 6, (32, 32, 3))
    for start, seconds in WINDOWS:  # frame-aligned, between frames (0.15 s: frame 2 first), past the end
        win = decode_sample(sample, start=start, seconds=seconds)
        s0, f0 = round(start * 16000), int(np.ceil(start * 10 - 1e-6))
        s1 = None if seconds is None else s0 + round(seconds * 16000)
        f1 = None if seconds is None else f0 + round(seconds * 10)
        np.testing.assert_array_equal(win.audio, full.audio[s0:s1])
        np.testing.assert_array_equal(win.frames, full.frames[f0:f1])
        assert win.meta == {**full.meta, "window_start": start} and win.key == clip.key
        audio_only = decode_sample(sample, start=start, seconds=seconds, frames=False)
        np.testing.assert_array_equal(audio_only.audio, win.audio)
        assert audio_only.frames.shape == (0, 32, 32, 3)
    with pytest.raises(ShardError, match="negative"):
        decode_sample(sample, start=-0.1, seconds=0.2)


def test_window_decodes_only_its_frames():
    sample = encode_sample(_clip(frames=6, seconds=0.6), "jpeg")
    sizes = json.loads(sample["json"])["frame_bytes"]
    ref = decode_sample(sample, start=0.2, seconds=0.2).frames  # frames 2 and 3
    # frames outside the window turned to garbage (same sizes): a full decode fails, the window does not look at them
    ends = np.cumsum(sizes)
    garbled = bytearray(sample["jpgs"])
    for f in (0, 1, 4, 5):
        garbled[ends[f] - sizes[f] : ends[f]] = b"\0" * sizes[f]
    bad = {**sample, "jpgs": bytes(garbled)}
    with pytest.raises(Exception):
        decode_sample(bad)
    np.testing.assert_array_equal(decode_sample(bad, start=0.2, seconds=0.2).frames, ref)
    # audio only: the frame member is never read
    no_frames = {k: v for k, v in sample.items() if k != "jpgs"}
    assert decode_sample(no_frames, start=0.1, seconds=0.3, frames=False).frames.shape == (0, 32, 32, 3)
    with pytest.raises(ShardError, match="no 'jpgs' member"):
        decode_sample(no_frames, start=0.1, seconds=0.3)


def test_read_clips_round_trips_a_shard_folder(tmp_path):
    """``read_clips`` returns every sample of a manifest's shards, in order, equal to what was written."""
    from avssl.data.shards import SCHEMA_VERSION, Clip, ShardWriter, read_clips

    rng = np.random.default_rng(0)
    clips = [Clip(f"v{i}-0000", rng.uniform(-0.5, 0.5, 16000).astype(np.float32), 16000,
                  rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8), 4.0, meta={"source": f"v{i}.mp4", "start": 1.5 * i})
             for i in range(5)]
    names = []
    for s, part in enumerate((clips[:3], clips[3:])):
        names.append(f"{s:06d}.tar")
        w = ShardWriter(tmp_path / names[-1])
        for c in part:
            w.add(encode_sample(c, frame_format="raw"))
        w.close()
    (tmp_path / "manifest.json").write_text(json.dumps({
        "version": SCHEMA_VERSION, "params": {}, "shards": [{"name": n} for n in names], "total_samples": 5,
        "total_hours": 0.0, "skipped": []}))
    back = read_clips(tmp_path)
    assert [c.key for c in back] == [c.key for c in clips]
    for a, b in zip(back, clips):
        assert (a.fps, a.sample_rate) == (b.fps, b.sample_rate)
        assert {k: a.meta[k] for k in b.meta} == b.meta  # the clip's own metadata survives the round trip
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_allclose(a.audio, b.audio, atol=1e-4)  # FLAC: 16-bit


def _write_tar(path, samples, fmt):
    """``samples`` as a tar written by Python's ``tarfile`` in ``fmt`` (not by :class:`ShardWriter`)."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for s in samples:
            for ext in sorted(k for k in s if k != "__key__"):
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(s[ext])
                tar.addfile(info, io.BytesIO(s[ext]))


def test_iter_samples_reads_shards_from_any_tar_writer(tmp_path):
    """The shard reader (memory-mapped local files, streams for pipes) gives WebDataset's samples for
    ustar, GNU and pax tars, long member names included, and the same decoded clips."""
    import webdataset as wds

    long_id = "v" * 120  # > ustar's 100-byte name field: a pax header or a GNU long-name member
    samples = []
    for i, (key, audio_format) in enumerate([("a-0000", "flac"), (f"{long_id}-0001", "pcm"), ("c-0002", "pcm")]):
        clip = _clip()
        clip.key = key
        samples.append(encode_sample(clip, ("raw", "jpeg", "h264")[i], 90, audio_format))
    writer = ShardWriter(tmp_path / "pax.tar")
    for s in samples:
        writer.add(s)
    writer.close()
    _write_tar(tmp_path / "gnu.tar", samples, tarfile.GNU_FORMAT)
    _write_tar(tmp_path / "ustar.tar", samples[::2], tarfile.USTAR_FORMAT)  # no long names in plain ustar
    for name, want in (("pax.tar", samples), ("gnu.tar", samples), ("ustar.tar", samples[::2])):
        url = str(tmp_path / name)
        for source in (url, f"pipe:cat {url}"):
            got = list(iter_samples([source]))
            ref = list(wds.WebDataset(url, shardshuffle=False, empty_check=False))
            assert [s["__key__"] for s in got] == [s["__key__"] for s in ref] == [s["__key__"] for s in want]
            for g, r in zip(got, ref):
                assert {k: bytes(v) for k, v in g.items() if not k.startswith("__")} == {
                    k: v for k, v in r.items() if not k.startswith("__")}
                a, b = decode_sample(g), decode_sample(r)
                np.testing.assert_array_equal(a.audio, b.audio)
                np.testing.assert_array_equal(a.frames, b.frames)


def test_iter_samples_reports_unreadable_shards(tmp_path):
    sample = encode_sample(_clip(), "raw", audio_format="pcm")
    writer = ShardWriter(tmp_path / "000000.tar")
    writer.add(sample)
    writer.close()
    data = (tmp_path / "000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])  # truncated inside the frames member
    bad = bytearray(data)
    bad[0] ^= 1  # a header that fails its checksum
    (tmp_path / "bad.tar").write_bytes(bytes(bad))
    (tmp_path / "empty.tar").write_bytes(b"")
    assert list(iter_samples([str(tmp_path / "empty.tar")])) == []
    for name, match in (("cut.tar", "truncated"), ("bad.tar", "checksum")):
        with pytest.raises(Exception, match=match):
            list(iter_samples([str(tmp_path / name)]))
    seen = []
    urls = [str(tmp_path / n) for n in ("cut.tar", "bad.tar", "000000.tar")]
    got = list(iter_samples(urls, handler=lambda e: seen.append(str(e)) or True))
    assert [s["__key__"] for s in got] == [sample["__key__"]]  # no partial sample from the truncated shard
    assert len(seen) == 2 and "cut.tar" in seen[0] and "bad.tar" in seen[1]


def test_network_and_fuse_shards_are_read_not_mapped(tmp_path, monkeypatch):
    """The file-system type of a shard's mount (the longest mount point holding its real path, in /proc/mounts)
    picks the reader: local types are memory-mapped, network and FUSE types are read; members are equal."""
    from avssl.data import shardfile

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\nserver:/x /data nfs4 rw 0 0\n"
                      "sshfs#h: /data/my\\040dir fuse.sshfs rw 0 0\n/dev/sdb /data/local xfs rw 0 0\n")
    for path, kind in (("/home/a.tar", "ext4"), ("/data/a.tar", "nfs4"), ("/data/my dir/a.tar", "fuse.sshfs"),
                       ("/data/local/a.tar", "xfs"), ("/datax/a.tar", "ext4")):
        assert shardfile.mount_fs_type(path, mounts) == kind
    assert shardfile.mount_fs_type("/a.tar", tmp_path / "none") is None
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: "nfs4")
    assert "nfs4" in shardfile.map_unsafe("x")
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: "fuse.gcsfuse")
    assert "fuse.gcsfuse" in shardfile.map_unsafe("x")
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: None)
    assert "unknown" in shardfile.map_unsafe("x")
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: "ext4")
    assert shardfile.map_unsafe("x") is None

    writer = ShardWriter(tmp_path / "000000.tar")
    writer.add(encode_sample(_clip(), "raw", audio_format="pcm"))
    writer.close()
    url = str(tmp_path / "000000.tar")
    (mapped,) = iter_samples([url])
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: "nfs")
    (read,) = iter_samples([url])
    assert isinstance(mapped["npy"], memoryview) and isinstance(read["npy"], bytes) and "__mapped__" not in read
    assert {k: bytes(v) for k, v in mapped.items() if not k.startswith("__")} == {
        k: v for k, v in read.items() if not k.startswith("__")}
    monkeypatch.setattr(shardfile.mmap, "mmap", lambda *a, **k: (_ for _ in ()).throw(OSError(19, "No such device")))
    monkeypatch.setattr(shardfile, "mount_fs_type", lambda path: "ext4")
    (refused,) = iter_samples([url])
    assert isinstance(refused["npy"], bytes)
