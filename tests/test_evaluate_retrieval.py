"""Audio <-> video retrieval (avssl.evaluate.retrieval): ranks against a planted similarity, aligned windows, the
``avssl eval --retrieval`` command on generated videos (bad files skipped with a reason), and the sweep column."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avssl.cli import main
from avssl.checkpoint import model_from_checkpoint
from avssl.evaluate.retrieval import load_clips, retrieval_inputs
from avssl.train.retrieval import clip_windows, has_retrieval_towers, rank_metrics, retrieval
from avssl.media.video import encode_video
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
    # video -> audio reads the columns: videos 0-3 find their own audio first (0.9 < 1.0 in columns 0 and 1);
    # columns 4 and 5 are all >= their own entry: rank 6
    assert r["v2a_top1"] == pytest.approx(4 / 6) and r["v2a_top5"] == pytest.approx(4 / 6)
    assert r["v2a_median_rank"] == 1.0
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
    # 2.6 fps: a window is round(2.6) = 3 frames = 1.154 s; every window lies inside the clip, aligned
    a, f = clip_windows(audio, frames[:9], crop, sr, 2.6)
    assert len(a) == 3 and (a[-1] != 0).all()
    for k in range(3):
        assert a[k, 0] == pytest.approx(f[k, 0, 0, 0, 0] / 2.6, abs=0.01)


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
    _videos(videos, 8)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    assert retrieval_inputs(str(videos))[1] is None  # a folder has no labels
    out = tmp_path / "eval"
    assert main(["eval", str(ckpt), "--retrieval", str(videos), "--out", str(out), "--no-baselines"]) == 0
    rec = json.loads((out / "retrieval.jsonl").read_text().splitlines()[0])
    assert rec["num_clips"] == 8 and rec["chance_top5"] == 5 / 8 and rec["chance_median_rank"] == 4.5
    assert [Path(s["path"]).name for s in rec["skipped"]] == ["broken.mp4"] and rec["skipped"][0]["reason"]
    # the command gives what the API gives on the decodable clips (a reference computed here)
    model, cfg = model_from_checkpoint(ckpt)
    clips, _ = load_clips(sorted(p for p in videos.iterdir() if p.name != "broken.mp4"), cfg, progress=False)
    ref = retrieval(model, cfg, clips)
    for k in ("a2v_top1", "a2v_top5", "a2v_median_rank", "v2a_top1", "v2a_top5", "v2a_median_rank"):
        assert rec[k] == pytest.approx(ref[k]), k
    assert ref["similarity"].shape == (8, 8) and len(set(ref["ranks"].tolist())) > 1  # not a degenerate ranking
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
    ckpt = make_checkpoint(tmp_path / "tiny.pt")  # and avssl eval says so before embedding anything
    assert main(["eval", str(ckpt), "--retrieval", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e"),
                 "--no-baselines"]) == 2
    assert not (tmp_path / "e" / "retrieval.jsonl").exists()


def test_which_models_retrieval_scores():
    assert has_retrieval_towers(["spec", "video"]) and has_retrieval_towers(["wave", "video"])
    assert not has_retrieval_towers(["video"]) and not has_retrieval_towers(["spec", "wave"])


def test_avepm_retrieval_set_is_the_test_split(shared_data):
    paths, labels = retrieval_inputs("avepm", shared_data)
    train = {line.strip() for line in (shared_data / "avepm" / "pretrain.txt").read_text().splitlines()}
    assert len(paths) == 172 and len(set(labels)) == 86
    assert not {str(p.relative_to(shared_data / "avepm")) for p in paths} & train  # never a pretraining clip
