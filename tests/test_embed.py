import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.media.audio import load_audio, resample
from avssl.checkpoint import save_checkpoint
from avssl.cli import main as cli_main
from avssl.config import load_config
from avssl.embed.collection import collect_inputs
from avssl.embed.embedder import Embedder, load_model
from avssl.models import build_model
from avssl.media.video import encode_audio, encode_video


def make_checkpoint(path: Path, preset: str = "tiny", seed: int = 0, sets: list[str] | None = None) -> Path:
    """A checkpoint built from a preset (and ``--set`` overrides) with random weights and non-trivial BatchNorm
    statistics."""
    cfg = load_config(preset, sets or [])
    torch.manual_seed(seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict()}, path)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def embedder(tiny_ckpt) -> Embedder:
    return load_model(tiny_ckpt, device="cpu")


def _noise(shape, seed=0, scale=0.1):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _tower(e: Embedder, x: np.ndarray, features: bool = False) -> np.ndarray:
    with torch.inference_mode():
        t = torch.from_numpy(np.atleast_2d(x))
        return (e.tower.forward_features(t) if features else e.tower(t)).numpy()


def test_load_model_matches_saved_tower(tiny_ckpt, embedder):
    state = torch.load(tiny_ckpt, weights_only=True)
    cfg = load_config("tiny")
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    model.eval()
    assert embedder.sample_rate == cfg.audio.sample_rate
    assert embedder.embedding_dim == model.towers["spec"].feature_dim
    assert embedder.window == int(cfg.data.crop_seconds * cfg.audio.sample_rate)
    x = _noise(embedder.window)
    with torch.inference_mode():
        ref = model.towers["spec"](torch.from_numpy(x)[None]).numpy()
    np.testing.assert_allclose(embedder.embed(x, embedder.sample_rate), ref, atol=1e-5)
    assert not embedder.train().tower.training  # inference only
    wave = load_model(tiny_ckpt, device="cpu", view="wave")
    with torch.inference_mode():
        ref = model.towers["wave"](torch.from_numpy(x)[None]).numpy()
    np.testing.assert_allclose(wave.embed(x, wave.sample_rate), ref, atol=1e-5)
    with pytest.raises(ValueError, match="not an audio view"):
        load_model(tiny_ckpt, view="video")


def test_long_audio_is_the_mean_over_overlapping_windows(embedder):
    w, h = embedder.window, embedder.window_hop
    assert h == w // 2
    n = 3 * w + 123  # not on the window grid: the last window is end-aligned
    starts = embedder._window_starts(n)
    assert starts[:-1] == list(range(0, n - w + 1, h)) and starts[-1] == n - w
    x = _noise(n, seed=1)
    ref = np.mean([_tower(embedder, x[s : s + w])[0] for s in starts], axis=0)
    np.testing.assert_allclose(embedder.embed(x, embedder.sample_rate)[0], ref, atol=1e-5)
    assert embedder._window_starts(2 * w) == [0, h, 2 * h]  # on the grid: nothing extra
    no_overlap = Embedder(embedder.tower, embedder.cfg, overlap=0.0)
    assert no_overlap._window_starts(n) == [0, w, 2 * w, n - w]


def test_short_audio_is_zero_padded_to_one_window(embedder):
    x = _noise(embedder.window // 3, seed=2)
    padded = np.pad(x, (0, embedder.window - len(x)))
    np.testing.assert_allclose(embedder.embed(x, embedder.sample_rate), _tower(embedder, padded), atol=1e-5)


def test_default_windows_per_call_follow_the_device(tiny_ckpt):
    """On a CPU the tower sees at most CPU_BATCH windows per call unless batch_size is given, in the fewest
    calls, equally filled: an 11 s clip at half overlap is 21 one-second windows -> 7, 7, 7 (10, 11 with
    batch_size=16; 21 with 32); 1.5 s is 2 windows -> one call."""
    from avssl.embed.embedder import CPU_BATCH, GPU_BATCH

    assert (CPU_BATCH, GPU_BATCH) == (8, 32)

    def calls(e):
        sizes, forward = [], e.forward_windows
        e.forward_windows = lambda x: (sizes.append(len(x)), forward(x))[1]
        e.embed(clip, e.sample_rate)
        return sizes

    e = load_model(tiny_ckpt, device="cpu")
    clip = _noise(int(e.sample_rate * 11), seed=0)
    assert len(e._window_starts(len(clip))) == 21
    assert calls(e) == [7, 7, 7]
    assert calls(load_model(tiny_ckpt, device="cpu", batch_size=16)) == [10, 11]
    assert calls(load_model(tiny_ckpt, device="cpu", batch_size=32)) == [21]
    clip = clip[: int(e.sample_rate * 1.5)]
    assert calls(e) == [2]


def test_batch_invariant_and_deterministic(tiny_ckpt, embedder):
    sr = embedder.sample_rate
    clips = [_noise(int(sr * s), seed=i) for i, s in enumerate([0.4, 1.0, 2.7, 5.3])]
    singles = np.concatenate([embedder.embed(c, sr) for c in clips])
    np.testing.assert_array_equal(singles, np.concatenate([embedder.embed(c, sr) for c in clips]))  # repeatable
    mixed = embedder.embed(clips[::-1] + [clips[0]], sr)  # other clips, other order, a duplicate
    np.testing.assert_allclose(mixed[::-1][1:], singles, atol=1e-5)
    np.testing.assert_allclose(mixed[-1], singles[0], atol=1e-5)
    one_at_a_time = load_model(tiny_ckpt, device="cpu", batch_size=1)
    np.testing.assert_allclose(one_at_a_time.embed(clips, sr), singles, atol=1e-5)
    batch = np.stack([np.pad(c, (0, len(clips[-1]) - len(c))) for c in clips])  # [B, N]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        e1 = embedder.embed(batch, sr)
        t1, _ = embedder.embed_timestamps(batch, sr)
        torch.set_num_threads(2)
        e2 = embedder.embed(batch[2:3], sr)
        t2, _ = embedder.embed_timestamps(batch[2:3], sr)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(e1[2:3], e2, atol=1e-5)
    np.testing.assert_allclose(t1[2:3], t2, atol=1e-5)


def test_inputs_numpy_torch_stereo_and_resampling(embedder):
    sr = embedder.sample_rate
    x = _noise((2, 2, 24000), seed=3)  # [B, C, N] stereo
    mono = x.mean(axis=1)
    ref = embedder.embed(mono, sr)
    np.testing.assert_allclose(embedder.embed(x, sr), ref, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(torch.from_numpy(x), sr), ref, atol=1e-6)
    np.testing.assert_allclose(embedder.embed([x[0], x[1]], sr), ref, atol=1e-6)  # list of [C, N]
    assert embedder.embed(x, sr).dtype == np.float32 and ref.shape == (2, embedder.embedding_dim)
    y = _noise(11025 * 2, seed=4)
    np.testing.assert_allclose(embedder.embed(y, 11025), embedder.embed(resample(y, 11025, sr), sr), atol=1e-6)
    ints = np.round(y * 32768).astype(np.int16)  # integer PCM is scaled to [-1, 1]
    np.testing.assert_allclose(embedder.embed(ints, 11025), embedder.embed(y, 11025), atol=1e-3)


@pytest.mark.parametrize("bad,match", [(np.zeros(0, np.float32), "empty"),
                                       (np.full(100, np.nan, np.float32), "NaN"),
                                       (np.zeros((1, 1, 1, 10), np.float32), r"\[B, C, N\]")])
def test_bad_inputs_are_clear_errors(embedder, bad, match):
    with pytest.raises(ValueError, match=match):
        embedder.embed(bad, 16000)


def test_timestamps_read_the_tower_frames(embedder):
    sr, fh = embedder.sample_rate, embedder.frame_hop_seconds
    x = _noise((2, embedder.window), seed=5)  # one window: frame i is centred at (i + 0.5) * fh
    feats = _tower(embedder, x, features=True)
    emb, seconds = embedder.embed_timestamps(x, sr, hop=fh / 2)
    assert emb.dtype == np.float32 and seconds.dtype == np.float64
    np.testing.assert_allclose(seconds, np.arange(len(seconds)) * fh / 2)
    assert seconds[-1] <= embedder.window / sr < seconds[-1] + fh / 2
    assert emb.shape == (2, len(seconds), embedder.embedding_dim)
    centred = [i for i in range(feats.shape[1]) if 2 * i + 1 < len(seconds)]  # the last frame may end later
    assert len(centred) >= feats.shape[1] - 1
    for i in centred:  # at a frame centre the embedding is that frame
        np.testing.assert_allclose(emb[:, 2 * i + 1], feats[:, i], atol=1e-5)
    np.testing.assert_allclose(emb[:, 2], (feats[:, 0] + feats[:, 1]) / 2, atol=1e-5)  # halfway: the mean
    np.testing.assert_allclose(emb[:, 0], feats[:, 0], atol=1e-5)  # before the first centre: clamped
    # long audio: each time is read from the window whose centre is nearest
    y = _noise(int(3.3 * sr), seed=6)
    emb, seconds = embedder.embed_timestamps(y, sr, hop=0.1)
    assert len(seconds) == 34 and emb.shape[1] == 34
    t = 1.9
    starts = np.array(embedder._window_starts(len(y)))
    s = starts[np.abs(starts + embedder.window / 2 - t * sr).argmin()]
    f = _tower(embedder, y[s : s + embedder.window], features=True)[0]
    pos = (t - s / sr) / fh - 0.5
    lo = int(np.floor(pos))
    np.testing.assert_allclose(emb[0, 19], f[lo] * (1 - (pos - lo)) + f[lo + 1] * (pos - lo), atol=1e-5)
    with pytest.raises(ValueError, match="equal length"):
        embedder.embed_timestamps([y, y[:100]], sr)


def test_embed_files_equals_embed(tmp_path, embedder):
    paths = [encode_audio(tmp_path / "a.wav", _noise(20000, seed=7), 16000),
             encode_audio(tmp_path / "b.flac", _noise(30000, seed=8), 22050)]
    got = embedder.embed_files(paths, progress=False)
    ref = np.concatenate([embedder.embed(load_audio(p, 16000), 16000) for p in paths])
    np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.fixture
def collection(tmp_path):
    """A folder of audio + a video + a broken file, and a list file pointing at one more file."""
    root = tmp_path / "media"
    for d in (root / "sub", tmp_path / "elsewhere"):
        d.mkdir(parents=True)
    encode_audio(root / "a.wav", _noise(16000, seed=10), 16000)
    encode_audio(root / "sub" / "a.mp3", _noise(24000, seed=11), 22050)
    encode_video(root / "sub" / "v.mp4", np.zeros((8, 32, 32, 3), np.uint8), 8, _noise(16000, seed=12), 16000)
    (root / "broken.wav").write_bytes(b"not audio at all")
    (root / "notes.md").write_text("ignored: not a media file")
    other = encode_audio(tmp_path / "elsewhere" / "a.wav", _noise(8000, seed=13), 8000)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# one file\nelsewhere/a.wav\n{tmp_path / 'missing.wav'}\n")
    return root, listing, other


def test_collect_inputs_names_are_unique(collection):
    root, listing, other = collection
    second = encode_audio(root.parent / "a.wav", _noise(8000, seed=14), 8000)  # same name as `other`
    items = collect_inputs([root, listing, root / "a.wav", other, second])  # repeats are dropped
    names = [n for _, n in items]
    assert len(names) == len(set(names)) == 7 and items[0][0] == root / "a.wav"
    assert "media/sub/a.mp3.npz" in names and "media/a.wav.npz" in names and "missing.wav.npz" in names
    clashing = [n for p, n in items if p in (other, second)]
    assert len(clashing) == 2 and all(n.startswith("a.wav.") and n != "a.wav.npz" for n in clashing)


def test_collect_inputs_names_clash_on_a_name_that_is_not_utf8(tmp_path):
    """Two folders called ``x`` both holding ``caf\\xe9.wav`` (not UTF-8): the clash gets each full path's hash,
    the hash of the bytes on disk, instead of an encoding error that stopped embed and classify."""
    name = os.fsdecode(b"caf\xe9.wav")
    paths = []
    for parent in ("one", "two"):
        (tmp_path / parent / "x").mkdir(parents=True)
        paths.append(encode_audio(tmp_path / parent / "x" / name, _noise(800, seed=15), 16000))
    items = collect_inputs([tmp_path / "one" / "x", tmp_path / "two" / "x"])
    assert [p for p, _ in items] == paths
    for p, n in items:
        digest = hashlib.sha1(os.fsencode(p.resolve())).hexdigest()[:10]
        assert n == f"x/{name}.{digest}.npz"


@pytest.mark.parametrize("workers", ["0", "3"])  # in the main thread; 3 files at once in worker threads
def test_cli_embed_collection_resume_and_split(tmp_path, tiny_ckpt, embedder, collection, workers):
    root, listing, other = collection
    out = tmp_path / "out"
    args = ["embed", str(tiny_ckpt), str(root), str(listing), "--out", str(out), "--timestamps", "--hop", "0.1",
            "--workers", workers, "--device", "cpu", "--no-progress"]
    assert cli_main(args) == 0
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    by_input = {Path(r["input"]).name: r for r in rows}
    assert len(rows) == 6
    assert by_input["broken.wav"]["status"] == "skipped" and "broken.wav" in by_input["broken.wav"]["reason"]
    assert by_input["missing.wav"]["status"] == "skipped" and "no such file" in by_input["missing.wav"]["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        z = np.load(out / r["output"])
        audio = load_audio(r["input"], embedder.sample_rate)
        np.testing.assert_allclose(z["embedding"], embedder.embed(audio, embedder.sample_rate)[0], atol=1e-5)
        emb, secs = embedder.embed_timestamps(audio, embedder.sample_rate, hop=0.1)
        np.testing.assert_allclose(z["timestamp_embeddings"], emb[0], atol=1e-5)
        np.testing.assert_array_equal(z["timestamps"], secs)
        assert z["seconds"] == pytest.approx(len(audio) / embedder.sample_rate)
    mtimes = {r["output"]: (out / r["output"]).stat().st_mtime_ns for r in ok}
    assert cli_main(args) == 0  # resume: nothing recomputed
    rows2 = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows2) == ["done"] * 4 + ["skipped"] * 2
    assert all((out / o).stat().st_mtime_ns == m for o, m in mtimes.items())
    newcomer = encode_audio(tmp_path / "a.wav", _noise(9000, seed=15), 16000)  # same output name as `other`
    assert cli_main(["embed", str(tiny_ckpt), str(newcomer), *args[4:]]) == 0
    (row,) = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    old_output = next(r["output"] for r in rows if r["input"] == str(other))
    assert row["status"] == "ok" and row["output"] == old_output  # recomputed, not reused
    np.testing.assert_allclose(np.load(out / row["output"])["embedding"],
                               embedder.embed(load_audio(newcomer, 16000), 16000)[0], atol=1e-5)
    with pytest.raises(ValueError, match="other settings"):
        cli_main(args[:-7] + ["--hop", "0.2", "--device", "cpu", "--no-progress"])
    other_ckpt = make_checkpoint(tmp_path / "other.pt", seed=3)
    with pytest.raises(ValueError, match="another checkpoint"):
        cli_main(["embed", str(other_ckpt), *args[2:]])
    split = tmp_path / "split"
    for rank in (0, 1):
        assert cli_main(["embed", str(tiny_ckpt), str(root), str(listing), "--out", str(split), "--device", "cpu",
                         "--num-nodes", "2", "--node-rank", str(rank), "--no-progress"]) == 0
    parts = [[json.loads(x)["input"] for x in (split / f"index-{r}-of-2.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(r["input"] for r in rows)


def test_embed_imports_no_training_code():
    code = ("import sys, avssl.embed.embedder, avssl.hear, avssl.embed.collection, avssl.export, avssl.finetune.classifier, avssl.finetune.classify; "
            "bad = [m for m in ('avssl.train.pretrain', 'avssl.data.stream', 'avssl.ingest.run', 'avssl.train.losses', 'avssl.data.augment', "
            "'avssl.train.distributed', 'avssl.evaluate.run', 'webdataset') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_real_file_round_trip(shared_data, tiny_ckpt, embedder):
    import avssl

    path = shared_data / "fsdd" / "recordings" / "0_jackson_0.wav"
    model = avssl.load_model(tiny_ckpt, device="cpu")
    audio = load_audio(path, 8000)  # native rate; resampled inside
    emb = model.embed(audio, 8000)
    assert emb.shape == (1, model.embedding_dim) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb, embedder.embed_files([path], progress=False), atol=1e-4)
    video = next((shared_data / "videos").rglob("*.mp4"))
    emb, secs = model.embed_timestamps(load_audio(video, 16000), 16000, hop=0.1)
    assert emb.shape == (1, len(secs), model.embedding_dim) and np.isfinite(emb).all()


def test_file_sha1_is_sha1_of_the_bytes(tmp_path, tiny_ckpt):
    import hashlib

    from avssl.checkpoint import file_sha1

    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(3 * (1 << 20) + 5))  # spans several read blocks
    for p in (big, tiny_ckpt):
        assert file_sha1(p) == hashlib.sha1(p.read_bytes()).hexdigest()
