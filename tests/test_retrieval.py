"""Audio <-> video retrieval (avssl.retrieval): ranks against a planted similarity, aligned windows, the
``avssl eval --retrieval`` command on generated videos (bad files skipped with a reason), and the sweep column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avssl.cli import main
from avssl.retrieval import clip_windows, rank_metrics, retrieval_inputs
from avssl.video import encode_video
from test_embed import make_checkpoint


def test_rank_metrics_on_a_planted_similarity():
    # 6 clips: audio i's own video ranks 1, 1, 2, 3, 6, 6 (ties count against the query)
    sim = np.zeros((6, 6), np.float32)
    sim[0, 0] = sim[1, 1] = 1.0
    sim[2, 2], sim[2, 0] = 0.5, 0.9
    sim[3, 3], sim[3, [0, 1]] = 0.5, 0.9
    sim[4, 4] = -1.0
    sim[5, :] = 0.0  # all tied: rank 6
    r = rank_metrics(sim)
    assert r["ranks"].tolist() == [1, 1, 2, 3, 6, 6]
    assert r["a2v_top1"] == pytest.approx(2 / 6) and r["a2v_top5"] == pytest.approx(4 / 6)
    assert r["a2v_median_rank"] == 2.5
    # video -> audio reads the columns: video 0 is beaten by audios 2 and 3 (0.9 > 1.0? no: 1.0 is its own)
    col = [(sim[:, j] >= sim[j, j]).sum() for j in range(6)]
    assert r["v2a_top1"] == pytest.approx(np.mean(np.array(col) == 1))
    assert r["v2a_median_rank"] == np.median(col)
    assert r["chance_top1"] == pytest.approx(1 / 6) and r["chance_top5"] == pytest.approx(5 / 6)
    assert r["chance_median_rank"] == 3.5


def test_clip_windows_are_aligned_and_cover_the_clip():
    sr, fps, crop = 100, 4.0, 1.0  # 1 s windows: 100 samples and 4 frames
    audio = np.arange(350, dtype=np.float32) / sr  # sample value = its time in seconds
    frames = np.zeros((14, 2, 2, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(14)  # frame value = its index: shown at index / fps seconds
    a, f = clip_windows(audio, frames, crop, sr, fps)
    assert a.shape == (3, 100) and f.shape == (3, 4, 2, 2, 3)  # 3.5 s: three whole windows
    for k in range(3):
        assert a[k, 0] == pytest.approx(f[k, 0, 0, 0, 0] / fps)  # the window's audio starts where its first frame shows
        assert f[k, :, 0, 0, 0].tolist() == list(range(4 * k, 4 * k + 4))
    a, f = clip_windows(audio, frames, crop, sr, fps, max_windows=2)
    assert [w[0] for w in a] == pytest.approx([0.0, 2.0])  # spread over the clip: first and last
    short_a, short_f = clip_windows(audio[:50], frames[:2], crop, sr, fps)  # shorter than a window: padded
    assert short_a.shape == (1, 100) and (short_a[0, 50:] == 0).all() and (short_f[0, 2:] == short_f[0, 1]).all()


def _videos(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        frames = np.full((16, 32, 32, 3), 30 * i, np.uint8)
        audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)
        paths.append(encode_video(folder / f"clip {i}.mp4", frames, 8.0, audio=audio, sample_rate=16000))
    return paths


def test_eval_retrieval_on_a_folder_of_videos(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    videos = tmp_path / "videos"
    videos.mkdir()
    _videos(videos, 4)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    assert retrieval_inputs(str(videos))[1] is None  # a folder has no labels
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--retrieval", str(videos), "--out", str(out), "--no-baselines"]) == 0
    rec = json.loads((out / "retrieval.jsonl").read_text().splitlines()[0])
    assert rec["num_clips"] == 4 and rec["chance_top5"] == 1.0 and rec["chance_median_rank"] == 2.5
    assert [Path(s["path"]).name for s in rec["skipped"]] == ["broken.mp4"] and rec["skipped"][0]["reason"]
    assert 1 <= rec["a2v_median_rank"] <= 4 and rec["a2v_top5"] == 1.0  # 4 clips: always in the first five
    assert "| *chance* |" in (out / "retrieval.md").read_text()
    # an audio-only checkpoint has nothing to retrieve with: a clear error, not an empty table
    audio_only = make_checkpoint(tmp_path / "audio.pt", preset="tiny")
    import torch

    state = torch.load(audio_only, weights_only=True)
    state["config"]["model"]["views"] = ["spec", "wave"]
    state["model"] = {k: v for k, v in state["model"].items() if ".video." not in k}
    torch.save(state, audio_only)
    assert main(["eval", str(audio_only), "--retrieval", str(videos), "--out", str(tmp_path / "e2"),
                 "--no-baselines"]) == 2


def test_retrieval_inputs_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="avepm"):
        retrieval_inputs(str(tmp_path / "nowhere"))


def test_avepm_retrieval_set_is_the_test_split(shared_data):
    paths, labels = retrieval_inputs("avepm", shared_data)
    train = {line.strip() for line in (shared_data / "avepm" / "pretrain.txt").read_text().splitlines()}
    assert len(paths) == 172 and len(set(labels)) == 86
    assert not {str(p.relative_to(shared_data / "avepm")) for p in paths} & train  # never a pretraining clip
