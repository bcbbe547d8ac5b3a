"""Embeddings pinned against a straightforward reference: the tower run window by window.

The reference below restates the windowing rule of ``docs/embedding.md`` in the plainest form (pad a short
clip to one window; else windows every ``window_hop`` plus an end-aligned last one; clip = mean over windows;
timestamps = linear interpolation in the window whose centre is nearest), so any speed-up of the batched
path that changes a number by more than 1e-5 fails here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.media.audio import load_audio
from avssl.cli import main as cli_main
from avssl.embed.embedder import Embedder, load_model
from avssl.models import SpecTower, WaveTower, create_model
from avssl.models.layers import layer_stats
from avssl.media.video import encode_audio
from test_embed import make_checkpoint

SR = 16000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ref") / "tiny.pt", seed=4)


def _noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _reference_windows(e: Embedder, clip: np.ndarray) -> list[np.ndarray]:
    w, h, n = e.window, e.window_hop, len(clip)
    if n <= w:
        return [np.pad(clip, (0, w - n))]
    starts = list(range(0, n - w + 1, h))
    if starts[-1] + w < n:
        starts.append(n - w)
    return [clip[s : s + w] for s in starts]


def _reference_clip(e: Embedder, clip: np.ndarray) -> np.ndarray:
    """Mean over the clip's windows of the tower on ONE window at a time."""
    out = []
    with torch.inference_mode():
        for x in _reference_windows(e, clip):
            x = torch.from_numpy(x)[None]
            out.append((layer_stats(e.tower.forward_layers(x)) if e.features == "layers" else e.tower(x))[0].numpy())
    return np.mean(out, axis=0)


def _reference_timestamps(e: Embedder, clip: np.ndarray, hop: float) -> np.ndarray:
    """Timestamp embeddings read from ``forward_features`` of one window at a time."""
    n, w = len(clip), e.window
    starts = [0] if n <= w else [s for s in range(0, n - w + 1, e.window_hop)]
    if n > w and starts[-1] + w < n:
        starts.append(n - w)
    times = np.arange(int(np.floor(n / SR / hop + 1e-9)) + 1) * hop
    out = []
    with torch.inference_mode():
        cut = {s: np.pad(clip[s : s + w], (0, w - len(clip[s : s + w]))) for s in starts}
        feats = {s: e.tower.forward_features(torch.from_numpy(x)[None]) for s, x in cut.items()}
    for t in times:
        s = min(starts, key=lambda s: abs(s / SR + w / SR / 2 - t))  # nearest window centre (first on ties)
        f = feats[s][0].numpy()
        pos = min(max((t - s / SR) / e.frame_hop_seconds - 0.5, 0), len(f) - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, len(f) - 1)
        out.append(f[lo] * (1 - (pos - lo)) + f[hi] * (pos - lo))
    return np.stack(out)


@pytest.mark.parametrize("view", ["spec", "wave"])
@pytest.mark.parametrize("features", ["pooled", "layers"])
def test_embeddings_equal_the_window_by_window_reference(ckpt, view, features):
    e = load_model(ckpt, device="cpu", view=view, features=features, batch_size=5)
    clips = [_noise(int(SR * s), seed=i) for i, s in enumerate([0.3, 1.0, 2.45, 4.1])]
    ref = np.stack([_reference_clip(e, c) for c in clips])
    np.testing.assert_allclose(e.embed(clips, SR), ref, atol=1e-5, rtol=0)
    for c, r in zip(clips, ref):  # one at a time, in other batches, in a [B, N] array
        np.testing.assert_allclose(e.embed(c, SR)[0], r, atol=1e-5, rtol=0)
    np.testing.assert_allclose(e.embed(np.stack([clips[2], clips[2]]), SR), ref[[2, 2]], atol=1e-5, rtol=0)
    y = clips[3]
    clip, frames, seconds = e.embed_with_timestamps(np.stack([y, y[::-1].copy()]), SR, hop=0.07)
    np.testing.assert_allclose(clip[0], ref[3], atol=1e-5, rtol=0)
    np.testing.assert_allclose(frames[0], _reference_timestamps(e, y, 0.07), atol=1e-5, rtol=0)
    np.testing.assert_allclose(frames[1], _reference_timestamps(e, y[::-1].copy(), 0.07), atol=1e-5, rtol=0)
    only_ts, only_seconds = e.embed_timestamps(y, SR, hop=0.07)  # the separate calls give the same numbers
    np.testing.assert_array_equal(only_seconds, seconds)
    np.testing.assert_allclose(only_ts[0], frames[0], atol=1e-6, rtol=0)
    assert clip.dtype == frames.dtype == np.float32 and clip.shape == (2, e.embedding_dim)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_and_neighbours_do_not_change_embeddings(ckpt, batch_size):
    clips = [_noise(int(SR * s), seed=10 + i) for i, s in enumerate([0.5, 3.3, 1.7, 6.0])]
    base = load_model(ckpt, device="cpu")
    ref = base.embed(clips, SR)
    other = load_model(ckpt, device="cpu", batch_size=batch_size)
    np.testing.assert_allclose(other.embed(clips, SR), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(other.embed(clips[::-1], SR)[::-1], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cnn14-tiny", "spec-resnet-tiny", "res1dnet-tiny", "cnn14-small", "res1dnet-small"])
def test_last_layer_averaged_over_frequency_is_forward_features(name):
    """The contract ``Embedder`` relies on to get clip (``layers``) and timestamp embeddings from one pass."""
    torch.manual_seed(0)
    tower = create_model(name).eval()
    assert isinstance(tower, (SpecTower, WaveTower))
    x = torch.randn(2, 20000) * 0.1
    with torch.inference_mode():
        last = tower.forward_layers(x)[-1]
        feats = tower.forward_features(x)
        pooled = tower(x)
    torch.testing.assert_close(last.unflatten(-1, (tower.feature_dim, -1)).mean(-1), feats, atol=1e-6, rtol=0)
    from avssl.models.layers import pool_time

    torch.testing.assert_close(pool_time(feats), pooled, atol=0, rtol=0)


def test_cli_timestamps_run_the_tower_once_per_window(tmp_path, ckpt, monkeypatch):
    """``avssl embed --timestamps`` gets clip and timestamp embeddings from ONE pass over each file's windows."""
    paths = [encode_audio(tmp_path / f"{i}.wav", _noise(int(SR * s), seed=20 + i), SR)
             for i, s in enumerate([2.5, 0.6])]
    e = load_model(ckpt, device="cpu")
    expected = sum(len(e._window_starts(max(int(SR * s), e.window))) for s in (2.5, 0.6))
    seen = []
    real = SpecTower.forward_features

    def counting(self, wave):
        seen.append(wave.shape[0])
        return real(self, wave)

    monkeypatch.setattr(SpecTower, "forward_features", counting)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    assert cli_main(["embed", str(ckpt), *map(str, paths), "--out", str(out), "--timestamps", "--device", "cpu",
                     "--workers", "0", "--threads", "1", "--no-progress"]) == 0
    assert torch.get_num_threads() == threads  # the caller's thread setting is restored
    assert sum(seen) == expected  # not 2x: the old CLI ran embed() and embed_timestamps() separately
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    monkeypatch.setattr(SpecTower, "forward_features", real)
    for p in paths:
        z = np.load(out / "embeddings" / f"{p.name}.npz")
        audio = load_audio(p, SR)
        np.testing.assert_allclose(z["embedding"], _reference_clip(e, audio), atol=1e-5, rtol=0)
        np.testing.assert_allclose(z["timestamp_embeddings"], _reference_timestamps(e, audio, 0.1), atol=1e-5, rtol=0)
