import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

import avssl.ingest.run as ingest_mod
from avssl.cli import main as cli_main
from avssl.config import load_config
from avssl.ingest.run import collect_items, ingest, read_segments
from avssl.data.shards import decode_sample, read_manifest
from avssl.media.video import encode_audio, encode_video

RATE, FPS = 16000, 10


def _av(seconds, seed, size=(24, 32)):
    """Frames whose mean brightness encodes the frame index, and a seeded noise soundtrack."""
    n = int(round(seconds * FPS))
    frames = np.zeros((n, *size, 3), np.uint8)
    for i in range(n):
        frames[i] = (seed * 40 + i * 5) % 256
    audio = (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)
    return frames, audio


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    for name, seconds, seed in (("a.mp4", 2.5, 1), ("sub/b.mp4", 1.2, 2), ("c.mkv", 0.3, 3), ("d.mp4", 1.0, 4)):
        frames, audio = _av(seconds, seed)
        encode_video(root / name, frames, FPS, audio, RATE)
    (root / "empty.mp4").write_bytes(b"")
    (root / "pointer.mp4").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    good = (root / "a.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    encode_video(root / "silent.mp4", _av(1.5, 5)[0], FPS)  # no audio stream
    encode_audio(root / "speech.wav", _av(1.5, 6)[1], RATE)  # audio only
    (root / "notes.txt").write_text("not an input: folders only collect media suffixes")
    return root


def _cfg(**ingest_overrides):
    ov = {"video.size": 16, "ingest.clip_seconds": 1.0, "ingest.min_seconds": 0.5, "ingest.samples_per_shard": 2}
    ov.update({f"ingest.{k}": v for k, v in ingest_overrides.items()})
    return load_config(None, [f"{k}={v}" for k, v in ov.items()])


def _read_all(folder):
    manifest = read_manifest(folder)
    urls = [str(folder / s["name"]) for s in manifest["shards"]]
    return manifest, [decode_sample(s) for s in wds.WebDataset(urls, shardshuffle=False)] if urls else []


def _shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="session")
def ingested(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    ingest([corpus], out, _cfg(), workers=1, progress=False)
    return out


def test_ingest_clips_and_manifest(ingested):
    manifest, clips = _read_all(ingested)
    keys = [c.key for c in clips]
    # a: 2.5 s -> 1 + 1 + 0.5 s; sub/b: 1.2 s -> 1 s (+0.2 s dropped); d: 1 s; c: 0.3 s too short
    assert keys == ["a-0000", "a-0001", "a-0002", "d-0000", "sub_b-0000"]
    assert manifest["total_samples"] == 5 and manifest["dropped_short_clips"] == 1
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["total_hours"] == pytest.approx(4.5 / 3600)
    assert manifest["params"]["clip_seconds"] == 1.0 and manifest["params"]["frame_format"] == "jpeg"
    for clip, (seconds, start) in zip(clips, [(1, 0), (1, 1), (0.5, 2), (1, 0), (1, 0)]):
        assert clip.audio.shape == (int(seconds * RATE),) and clip.frames.shape == (int(seconds * FPS), 16, 16, 3)
        assert clip.meta["start"] == start and clip.meta["duration"] == seconds
    # frames carry the clip's own time: brightness of a's frame i is (40 + 5 * (10 * clip + i))
    a2 = clips[2]
    np.testing.assert_allclose(a2.frames.mean(axis=(1, 2, 3)), 40 + 5 * np.arange(20, 25), atol=2.5)
    # audio is the source soundtrack at the right offset (AAC is lossy: correlate, not compare)
    src = _av(2.5, 1)[1]
    for k in range(3):
        seg = src[k * RATE : k * RATE + len(clips[k].audio)]
        assert np.corrcoef(seg, clips[k].audio)[0, 1] > 0.95


def test_bad_inputs_skipped_with_reasons(ingested, corpus):
    manifest = read_manifest(ingested)
    reasons = {e["path"].split("/")[-1]: e["reason"] for e in manifest["skipped"]}
    assert reasons == {"empty.mp4": "empty", "pointer.mp4": "not-media", "truncated.mp4": "corrupt",
                       "silent.mp4": "no-audio", "speech.wav": "audio-only", "c.mkv": "too-short"}
    assert manifest["skipped_by_reason"]["empty"] == 1 and manifest["ingested_inputs"] == 3


def test_audio_only_keep_and_unreadable(corpus, tmp_path):
    m = ingest([corpus / "speech.wav", tmp_path / "missing.mp4"], tmp_path / "o", _cfg(audio_only="keep"),
               workers=1, progress=False)
    _, clips = _read_all(tmp_path / "o")
    assert [c.key for c in clips] == ["speech-0000", "speech-0001"]
    assert clips[0].frames.shape == (0, 16, 16, 3) and len(clips[1].audio) == RATE // 2
    assert m["skipped"] == [{"path": str(tmp_path / "missing.mp4"), "reason": "unreadable",
                             "detail": "no such file or directory"}]


def test_deterministic_across_workers_and_runs(corpus, ingested, tmp_path):
    ingest([corpus], tmp_path / "w2", _cfg(), workers=2, progress=False)
    assert _shard_bytes(tmp_path / "w2") == _shard_bytes(ingested)
    with tarfile.open(tmp_path / "w2" / "000000.tar") as tar:
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_audio_and_frame_storage_options(corpus, ingested, tmp_path):
    """``ingest.audio_format=pcm`` and ``ingest.frame_format=raw``: the same clips as the default ingest;
    PCM audio equal to FLAC's, raw frames within JPEG's error of the default's."""
    ingest([corpus], tmp_path / "pcm", _cfg(audio_format="pcm", frame_format="raw"), workers=1, progress=False)
    manifest, clips = _read_all(tmp_path / "pcm")
    _, ref = _read_all(ingested)
    assert manifest["params"]["audio_format"] == "pcm" and manifest["params"]["frame_format"] == "raw"
    assert [c.key for c in clips] == [c.key for c in ref] and clips
    for a, b in zip(clips, ref):
        np.testing.assert_array_equal(a.audio, b.audio)
        assert a.frames.shape == b.frames.shape and np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 4
        assert a.meta == b.meta


def test_resume_after_kill(corpus, ingested, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real = ingest_mod.process_item
    calls = []

    def dying(item, *args):
        calls.append(item.video_id)
        if len(calls) == 5:  # killed while the third shard is being filled
            raise KeyboardInterrupt
        return real(item, *args)

    monkeypatch.setattr(ingest_mod, "process_item", dying)
    with pytest.raises(KeyboardInterrupt):  # workers=0: decoded in this process, so the interrupt is ours
        ingest([corpus], out, _cfg(), workers=0, progress=False)
    assert not (out / "manifest.json").exists()  # an interrupted run never looks finished
    state = json.loads(next((out / ".ingest").glob("node-*.json")).read_text())
    done = [s["name"] for s in state["shards"]]
    assert done and sorted(p.name for p in out.glob("*.tar")) == done
    monkeypatch.setattr(ingest_mod, "process_item", real)
    # a kill inside a shard write leaves a temp file; a kill between rename and bookkeeping, an unlisted tar
    (out / f"{len(done):06d}.tar.tmp").write_bytes(b"half a shard")
    (out / f"{len(done) + 1:06d}.tar").write_bytes(b"not recorded as finished")
    before = {n: (out / n).stat().st_mtime_ns for n in done}
    ingest([corpus], out, _cfg(), workers=1, progress=False)
    assert {n: (out / n).stat().st_mtime_ns for n in done} == before  # finished shards kept
    assert _shard_bytes(out) == _shard_bytes(ingested)  # nothing duplicated or lost
    assert not list(out.glob("*.tmp"))
    assert read_manifest(out) == read_manifest(ingested)
    ingest([corpus], out, _cfg(), workers=1, progress=False)  # re-run after completion: no-op
    assert _shard_bytes(out) == _shard_bytes(ingested)


def test_resume_refuses_other_parameters(corpus, ingested):
    with pytest.raises(ValueError, match="different parameters"):
        ingest([corpus], ingested, _cfg(frame_format="raw"), workers=1, progress=False)


def test_node_split_covers_every_input_once(corpus, ingested, tmp_path):
    out = tmp_path / "nodes"
    items, _ = collect_items([corpus])
    for rank in (2, 0, 1):
        m = ingest([corpus], out, _cfg(), num_nodes=3, node_rank=rank, workers=1, progress=False)
        assert ("shards" in m) == (rank == 1)  # the manifest appears when the last node finishes
    manifest, clips = _read_all(out)
    _, single = _read_all(ingested)
    assert sorted(c.key for c in clips) == sorted(c.key for c in single)
    assert len({c.key for c in clips}) == len(clips)
    for clip in clips:  # every clip came from the node that owns its input
        shard = next(s["name"] for s in manifest["shards"] if (out / s["name"]).read_bytes().count(clip.key.encode()))
        rank = int(shard[:6]) % 3
        assert clip.meta["video_id"] in {it.video_id for it in items[rank::3]}
    assert len(manifest["skipped"]) == 6


def test_segment_csv(corpus, tmp_path):
    # AudioSet style on the full video "a" (cut the segment), VGGSound style on a pre-cut file
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "a.mp4").write_bytes((corpus / "a.mp4").read_bytes())
    (tmp_path / "vids" / "zz_3000_13000.mp4").write_bytes((corpus / "d.mp4").read_bytes())
    (tmp_path / "seg.csv").write_text('# YTID, start_seconds, end_seconds, positive_labels\n'
                                      'a, 0.500, 2.000, "/m/dog,/m/bark"\nnope, 1.0, 2.0, "/m/x"\n')
    (tmp_path / "vgg.csv").write_text("zz,3,dog barking,test\n")
    assert read_segments(tmp_path / "vgg.csv") == [("zz", 3.0, 13.0, ("dog barking",))]
    m = ingest([tmp_path / "seg.csv", tmp_path / "vgg.csv", tmp_path / "vids"], tmp_path / "o", _cfg(),
               workers=1, progress=False)
    _, clips = _read_all(tmp_path / "o")
    assert [c.key for c in clips] == ["a_500_2000-0000", "a_500_2000-0001", "zz_3000_13000-0000"]
    assert clips[0].meta["labels"] == ["/m/dog", "/m/bark"] and clips[2].meta["labels"] == ["dog barking"]
    assert [c.meta["start"] for c in clips] == [0.5, 1.5, 0.0] and len(clips[1].audio) == RATE // 2
    # the segment starts 0.5 s in: frame 0 is source frame 5
    assert clips[0].frames[0].mean() == pytest.approx(40 + 25, abs=2.5)
    assert [e["reason"] for e in m["skipped"]] == ["not-found"]


def test_cli_exit_codes(corpus, tmp_path):
    args = ["ingest", "--no-progress", "--set", "video.size=16", "--set", "ingest.min_seconds=0.5"]
    assert cli_main(args + [str(corpus / "empty.mp4"), "--out", str(tmp_path / "x")]) == 1
    assert cli_main(args + [str(corpus / "d.mp4"), str(corpus / "empty.mp4"), "--out", str(tmp_path / "y")]) == 0
    assert read_manifest(tmp_path / "y")["total_samples"] == 1
    assert (tmp_path / "y" / "config.yaml").is_file()


def _declared_duration(path):
    """Independent reference: the container's own stream durations (the shorter stream wins)."""
    import av

    with av.open(str(path)) as c:
        ends = [float((s.start_time or 0) * s.time_base + s.duration * s.time_base)
                for s in (c.streams.audio[0], c.streams.video[0]) if s.duration is not None]
        return min(ends) if ends else c.duration / 1e6


@pytest.mark.shared_data
def test_real_videos(shared_data, tmp_path_factory):
    import csv

    out = tmp_path_factory.mktemp("real")
    cfg = load_config(None, ["video.size=16", "ingest.clip_seconds=40", "ingest.min_seconds=0.5",
                             "ingest.frame_format=raw", "ingest.samples_per_shard=16"])
    manifest = ingest([shared_data / "videos", shared_data / "videos_no_audio"], out, cfg, workers=2, progress=False)
    rows = list(csv.DictReader(open(shared_data / "videos" / "videos.csv")))
    assert len(rows) == 39 and manifest["total_samples"] == 39 and manifest["ingested_inputs"] == 39
    assert {(e["path"].split("/")[-1], e["reason"]) for e in manifest["skipped"]} == {
        ("birthday.mp4", "no-audio"), ("silence_girl.mp4", "no-audio")}
    _, clips = _read_all(out)
    by_source = {c.meta["source"].split("videos/", 1)[1]: c for c in clips}
    assert sorted(by_source) == sorted(r["path"] for r in rows)
    for row in rows:
        clip = by_source[row["path"]]
        want = _declared_duration(shared_data / "videos" / row["path"])
        assert clip.meta["duration"] == pytest.approx(want, abs=0.05), row["path"]
        # videos.csv counts the undecoded AAC end padding (<= one 1024-sample frame) and the longer stream
        assert -0.01 < float(row["duration_s"]) - clip.meta["duration"] < 0.13, row["path"]
        assert len(clip.audio) == round(clip.meta["duration"] * RATE)
        assert len(clip.frames) == int(np.ceil(clip.meta["duration"] * FPS - 1e-6))
        assert clip.frames.shape[1:] == (16, 16, 3) and clip.frames.std() > 1  # real pictures, not blank
        assert np.abs(clip.audio).max() > 0.01
