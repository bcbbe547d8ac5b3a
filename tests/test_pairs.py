"""Pairs across crops (``spec-wave2``, ``wave2-video``): which crop each tower sees, mixing, FLOPs."""

from __future__ import annotations

import pytest
import torch

from avssl.config import ConfigError, load_config
from avssl.data.stream import Batch
from avssl.pairs import crop_views
from avssl.train.trainer import Trainer, _augment_and_mix, plan_views

SR, FPS, SIZE, CROP = 16000, 8.0, 16, 0.5
BASE = [f"audio.sample_rate={SR}", f"video.fps={FPS}", f"video.size={SIZE}", f"data.crop_seconds={CROP}",
        "data.batch_size=4", "augment.random_gain_db=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _batch(b: int = 4, seed: int = 0) -> Batch:
    """A batch already cut to the crop (the trainer's crop starts at 0): two distinct audio crops and frames."""
    g = torch.Generator().manual_seed(seed)
    n, t = int(SR * CROP), int(FPS * CROP)
    frames = torch.randint(0, 256, (b, t, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    keys = [f"v{i}-0000" for i in range(b)]
    return Batch(torch.randn(b, n, generator=g), frames, keys, torch.randn(b, n, generator=g))


def test_each_tower_sees_the_crop_its_pairs_name():
    """``spec-wave2`` + ``wave2-video``: the waveform tower runs once, on crop 2's audio exactly; the spectrogram
    tower on crop 1's audio; the video tower on crop 1's frames; the losses are those of these embeddings."""
    cfg = load_config("tiny", BASE + ["augment.mix=none", "loss.pairs=[spec-wave2, wave2-video]"])
    assert plan_views(cfg) and crop_views(cfg.loss.pairs, cfg.model.views) == (["spec", "video"], ["wave"])
    trainer = Trainer(cfg, torch.device("cpu"))
    seen: dict[str, list[torch.Tensor]] = {v: [] for v in cfg.model.views}
    for v, tower in trainer.model.towers.items():
        tower.register_forward_hook(lambda m, args, out, v=v: seen[v].append(args[0].detach().clone()))
    batch = _batch()
    scalars, emb = trainer.step(batch)
    assert set(emb) == {"spec", "video", "wave2"} and {k: len(x) for k, x in seen.items()} == {
        "spec": 1, "wave": 1, "video": 1}
    torch.testing.assert_close(seen["wave"][0], batch.audio2, rtol=0, atol=0)
    torch.testing.assert_close(seen["spec"][0], batch.audio, rtol=0, atol=0)
    torch.testing.assert_close(seen["video"][0], batch.frames.float() / 255, rtol=0, atol=0)
    want = trainer.loss_fn(emb, torch.eye(4), batch.source_ids())
    assert set(want) == {"nce/spec-wave2", "nce/wave2-video"}
    for k, v in want.items():
        assert scalars[k].item() == pytest.approx(v.item(), rel=1e-6)


def test_wave2_video_alone_makes_a_two_crop_run_and_duplicates_are_refused():
    assert plan_views(load_config("tiny", BASE + ["loss.pairs=[wave2-video]"]))
    assert not plan_views(load_config("tiny", BASE + ["loss.pairs=[spec-video, spec-wave]"]))
    with pytest.raises(ConfigError, match="'wave2-spec' compares what 'spec-wave2' compares"):
        plan_views(load_config("tiny", BASE + ["loss.pairs=[spec-wave2, wave2-spec]"]))


def test_both_crops_of_a_clip_mix_with_the_same_matrix():
    """Audio-only mixup: each crop becomes ``M @ crop`` with the one mix matrix ``M`` the loss gets."""
    cfg = load_config("tiny", BASE + ["augment.mix=mixup", "augment.mix_video=false", "loss.pairs=[spec-wave2]"])
    batch = _batch(b=6, seed=1)
    mixed, m = _augment_and_mix(batch, cfg, torch.Generator().manual_seed(0))
    assert not torch.equal(m, torch.eye(6)) and torch.allclose(m.sum(1), torch.ones(6))
    torch.testing.assert_close(mixed.audio, m @ batch.audio)
    torch.testing.assert_close(mixed.audio2, m @ batch.audio2)


def test_flops_count_each_tower_once_per_crop_it_runs_on():
    from avssl.train.flops import train_step_flops

    def gflops(pairs: str, views: str = "[spec, wave]") -> float:
        return train_step_flops(load_config("tiny", [f"model.views={views}", f"loss.pairs={pairs}"]))["gflops_per_step"]

    one_wave = gflops("[wave-wave]", "[wave]") / 2  # one waveform forward + backward (the loss: a 2 x 2 matmul)
    same = gflops("[spec-wave]")
    assert gflops("[spec-wave2]") == same  # the waveform tower runs on crop 2 instead of crop 1
    assert gflops("[spec-wave, spec-wave2]") == pytest.approx(same + one_wave, rel=1e-3)  # and on both crops
    assert gflops("[wave-wave, spec-wave2]") == gflops("[wave-wave, spec-wave]") == gflops("[spec-wave, spec-wave2]")
