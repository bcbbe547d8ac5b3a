"""Any file name and folder depth ingests; an input that fails in any way is a recorded skip, never a crash."""

import os
import re
import tarfile

import numpy as np
import pytest
import webdataset as wds

import avssl.ingest.run as ingest_mod
from avssl.config import load_config
from avssl.ingest.run import ingest
from avssl.data.shards import decode_sample, read_manifest
from avssl.media.video import encode_video

RATE, FPS = 16000, 10
DEEP = "/".join(["a folder.with dots and spaces"] * 6)  # 179 characters of nested folders
NAMES = [
    f"{DEEP}/clip one.v2.final.mp4",
    f"{DEEP}/clip one_v2_final.mp4",  # sanitizes to the same id as the one above
    "b" * 200 + ".mp4",
    "b" * 200 + "c.mp4",  # shares its first 200 characters with the one above
    "ünïcödé ✓ ☃ (take 2).mp4",
    "日本語.mp4",  # nothing ASCII: id "x"
    "x.mp4",  # ... the same id
    "plain.mp4",
]


def _video(path, seed, seconds=1.5):
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.full((int(seconds * FPS), 16, 16, 3), (37 * seed) % 256, np.uint8)
    audio = (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)
    encode_video(path, frames, FPS, audio, RATE)
    return audio


def _cfg(**overrides):
    ov = {"video.size": 16, "ingest.clip_seconds": 2.0, "ingest.min_seconds": 0.5, "ingest.samples_per_shard": 3}
    ov.update({f"ingest.{k}": v for k, v in overrides.items()})
    return load_config(None, [f"{k}={v}" for k, v in ov.items()])


def test_long_nested_dotted_unicode_names(tmp_path):
    root = tmp_path / "in"
    sources = {str(root / name): _video(root / name, seed) for seed, name in enumerate(NAMES)}
    try:  # a file name that is not valid UTF-8 (Linux allows any bytes)
        latin1 = root / os.fsdecode(b"caf\xe9 latin-1.mp4")
        sources[str(latin1)] = _video(latin1, len(NAMES))
    except (OSError, UnicodeError):
        pass
    assert max(len(name) for name in NAMES) > 200

    manifest = ingest([root], tmp_path / "out", _cfg(), workers=2, progress=False)
    assert manifest["skipped"] == [] and manifest["total_samples"] == len(sources)
    urls = [str(tmp_path / "out" / s["name"]) for s in manifest["shards"]]
    clips = [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)]
    keys = [c.key for c in clips]
    assert len(set(keys)) == len(sources)  # unique keys, every input once
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,90}-0000", k) for k in keys), keys  # WebDataset-safe
    assert "plain-0000" in keys  # short names keep their id
    assert {c.meta["source"] for c in clips} == set(sources)
    for clip in clips:  # each sample holds its own source's soundtrack
        ref = sources[clip.meta["source"]]
        assert len(clip.audio) == len(ref) and np.corrcoef(ref, clip.audio)[0, 1] > 0.95
    for url in urls:  # member names fit plain ustar headers: readable by any tar tool, no extension headers
        with tarfile.open(url) as tar:
            assert all(len(m.name) <= 100 and not m.pax_headers for m in tar.getmembers())

    # the same files through a list file (its lines are file-system bytes, not necessarily UTF-8)
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in sources) + b"in/missing.mp4\n")
    m = ingest([listed], tmp_path / "from_list", _cfg(), workers=1, progress=False)
    assert m["total_samples"] == len(sources) and [e["reason"] for e in m["skipped"]] == ["unreadable"]


def test_unexpected_error_is_a_skip(tmp_path, monkeypatch):
    """An input that raises anything (here after its first clip) is skipped with reason 'error'; no clip of it stays."""
    root = tmp_path / "in"
    for seed, name in enumerate(["a.mp4", "boom.mp4", "c.mp4"]):
        _video(root / name, seed, seconds=2.5)
    real = ingest_mod.ClipReader

    class Exploding(real):
        def __iter__(self):
            for k, clip in enumerate(super().__iter__()):
                if self.path.name == "boom.mp4" and k == 1:
                    raise ValueError("codec exploded")
                yield clip

    monkeypatch.setattr(ingest_mod, "ClipReader", Exploding)
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        m = ingest([root], out, _cfg(clip_seconds=1.0), workers=workers, progress=False)
        assert m["skipped"] == [{"path": str(root / "boom.mp4"), "reason": "error", "detail": "ValueError: codec exploded"}]
        keys = [s["__key__"] for s in wds.WebDataset([str(out / s["name"]) for s in m["shards"]], shardshuffle=False)]
        assert keys == ["a-0000", "a-0001", "a-0002", "c-0000", "c-0001", "c-0002"]
        assert read_manifest(out)["skipped_by_reason"] == {"error": 1}
        assert not list((out / ".ingest").glob("spool-*"))  # spool files are gone once the run is complete


@pytest.mark.parametrize("frame_format", ["jpeg", "raw"])
def test_long_name_shard_is_readable(tmp_path, frame_format):
    """Keys past the ustar limit (a 6-digit clip index on a 90-character id) get pax headers that WebDataset reads."""
    from avssl.data.shards import Clip, ShardWriter, encode_sample

    key = "v" * 90 + "-123456"
    clip = Clip(key, np.zeros(1600, np.float32), RATE, np.zeros((1, 8, 8, 3), np.uint8), FPS, {"source": "s"})
    writer = ShardWriter(tmp_path / "000000.tar")
    writer.add(encode_sample(clip, frame_format))
    writer.close()
    (sample,) = list(wds.WebDataset(str(tmp_path / "000000.tar"), shardshuffle=False))
    assert sample["__key__"] == key and decode_sample(sample).frames.shape == (1, 8, 8, 3)
