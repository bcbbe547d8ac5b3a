"""Evaluation: metrics against scikit-learn, the linear probe, baselines, the embedding cache, reports, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from avssl.media.audio import LogMel
from avssl.evaluate.baselines import StatsBaseline, dct_matrix
from avssl.evaluate.run import ModelRef, embed_task, evaluate, resolve_model, with_baselines
from avssl.evaluate.probe import average_precision, classification_metrics, d_prime, probe, roc_auc, run_probes
from avssl.evaluate.tasks import Task, load_task
from avssl.media.video import encode_audio

SR = 16000


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for ties in (False, True):
        y = (rng.random((300, 6)) < 0.2).astype(np.float32)
        s = rng.random((300, 6)) + y * rng.random(6)
        if ties:
            s = np.round(s, 1)  # many tied scores
        for k in range(6):
            assert average_precision(y[:, k], s[:, k]) == pytest.approx(average_precision_score(y[:, k], s[:, k]))
            assert roc_auc(y[:, k], s[:, k]) == pytest.approx(roc_auc_score(y[:, k], s[:, k]))
        m = classification_metrics(y, s)
        assert m["mAP"] == pytest.approx(average_precision_score(y, s, average="macro"))
        assert m["auc"] == pytest.approx(roc_auc_score(y, s, average="macro"))
        assert "accuracy" not in m
    labels = rng.integers(0, 5, 200)
    scores = rng.random((200, 5))
    m = classification_metrics(labels, scores)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    assert m["mAP"] == pytest.approx(average_precision_score(np.eye(5)[labels], scores, average="macro"))


def test_d_prime():
    from statistics import NormalDist

    assert d_prime(0.5) == pytest.approx(0.0, abs=1e-12)
    assert d_prime(NormalDist().cdf(1 / np.sqrt(2))) == pytest.approx(1.0)
    assert d_prime(0.2) == pytest.approx(-d_prime(0.8))


def _blobs(rng, n, k, d, sep):
    centers = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    return centers[y] + rng.normal(size=(n, d)), y


def test_probe_separable_and_shuffled():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 900, 4, 16, sep=4.0)
    res = probe(x[:600], y[:600], x[600:], y[600:], seed=0)
    assert res["metrics"]["accuracy"] >= 0.99 and res["num_train"] == 480 and res["num_valid"] == 120
    assert res["scores"].shape == (300, 4) and np.allclose(res["scores"].sum(1), 1, atol=1e-5)
    noise = rng.integers(0, 4, 900)  # labels independent of the features
    chance = probe(x[:600], noise[:600], x[600:], noise[600:], seed=0)["metrics"]["accuracy"]
    assert abs(chance - 0.25) < 0.08
    again = probe(x[:600], y[:600], x[600:], y[600:], seed=0)
    np.testing.assert_array_equal(again["scores"], res["scores"])  # seeded: reproducible


def test_probe_multilabel_and_given_validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 12))
    y = (x[:, :5] > 0.3).astype(np.float32)  # label k is a threshold on feature k
    res = probe(x[:400], y[:400], x[500:], y[500:], valid_x=x[400:500], valid_y=y[400:500], seed=0)
    assert res["metrics"]["mAP"] > 0.97 and res["num_valid"] == 100 and res["num_train"] == 400
    noise = probe(x[:400], rng.permutation(y[:400]), x[500:], y[500:], seed=0)
    assert noise["metrics"]["mAP"] < 0.5 and abs(noise["metrics"]["auc"] - 0.5) < 0.1


def test_mfcc_is_dct_of_logmel_and_stats_match():
    from scipy.fft import dct

    v = np.random.default_rng(0).normal(size=(3, 64))
    np.testing.assert_allclose(v @ dct_matrix(20, 64).T, dct(v, norm="ortho", axis=1)[:, :20], rtol=1e-5, atol=1e-5)
    t = np.arange(SR) / SR
    audio = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    lm = LogMel()(torch.from_numpy(audio)[None])[0].numpy()  # [64, T]
    logmel = StatsBaseline("logmel-stats").embed(audio, SR)
    np.testing.assert_allclose(logmel[0], np.r_[lm.mean(1), lm.std(1)], rtol=1e-4, atol=1e-4)
    mfcc = dct(lm, norm="ortho", axis=0)[:20]
    got = StatsBaseline("mfcc-stats").embed([audio, audio[:8000]], SR)
    assert got.shape == (2, 40)
    np.testing.assert_allclose(got[0], np.r_[mfcc.mean(1), mfcc.std(1)], rtol=1e-3, atol=1e-3)
    # 8 kHz input is resampled inside: same tone, nearly the same statistics
    low = StatsBaseline("logmel-stats").embed(audio[::2], SR // 2)
    assert np.corrcoef(low[0, :64], logmel[0, :64])[0, 1] > 0.95


def _tone_folder(root: Path, classes=(300.0, 700.0, 1500.0), per_class=6) -> Path:
    rng = np.random.default_rng(0)
    for c, f0 in enumerate(classes):
        for i in range(per_class):
            n = int(SR * rng.uniform(0.2, 0.4))
            t = np.arange(n) / SR
            x = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.02 * rng.normal()) * t) + 0.01 * rng.normal(size=n)
            path = root / f"class{c}" / f"{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_audio(path, x.astype(np.float32), SR)
    return root


class Counting:
    """An encoder that counts the clips it embeds (mean and std of the waveform)."""

    sample_rate = SR

    def __init__(self):
        self.calls = 0

    def embed(self, clips, sample_rate):
        self.calls += len(clips)
        return np.array([[np.mean(c), np.std(c)] for c in clips], dtype=np.float32)


def test_embedding_cache_never_reembeds(tmp_path):
    task = load_task(f"folder:{_tone_folder(tmp_path / 'data')}")
    enc = Counting()
    ref = ModelRef("counting", "counting-v1", enc)
    x1 = embed_task(ref, task, tmp_path / "cache", progress=False)
    assert enc.calls == len(task.examples) == 18 and x1.shape == (18, 2)
    assert sorted(p.name for p in (tmp_path / "cache" / "counting-v1").rglob("*.npz")) == [
        f"fold{k}.npz" for k in range(1, 6)]
    x2 = embed_task(ref, task, tmp_path / "cache", progress=False)
    assert enc.calls == 18
    np.testing.assert_array_equal(x1, x2)
    # rows line up with the examples whatever the split order on disk
    for i, ex in enumerate(task.examples[:3]):
        from avssl.media.audio import load_audio

        assert x1[i, 1] == pytest.approx(np.std(load_audio(ex.path, SR)), rel=1e-5)
    # a changed split is re-embedded (only that split)
    drop = next(ex for ex in task.examples if ex.split == "fold1")
    smaller = Task(task.name, [ex for ex in task.examples if ex != drop], task.classes, task.folds)
    x3 = embed_task(ref, smaller, tmp_path / "cache", progress=False)
    assert enc.calls == 18 + sum(ex.split == "fold1" for ex in smaller.examples)
    np.testing.assert_array_equal(x3, x1[[i for i, ex in enumerate(task.examples) if ex != drop]])


def test_segments_are_cut_from_their_file(tmp_path):
    from avssl.evaluate.run import _embed_examples
    from avssl.evaluate.tasks import Example

    t = np.arange(2 * SR) / SR
    wave = np.where(t < 1, 0.1, 0.5).astype(np.float32) * np.sin(2 * np.pi * 200 * t)
    path = encode_audio(tmp_path / "two.wav", wave.astype(np.float32), SR)
    exs = [Example(path, ("a",), "train", 0.0, 1.0), Example(path, ("a",), "train", 1.0, 1.0)]
    emb = _embed_examples(Counting(), exs, batch_size=8, progress=False, desc="seg")
    assert emb[0, 1] == pytest.approx(0.1 / np.sqrt(2), rel=0.02)
    assert emb[1, 1] == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_evaluate_end_to_end_and_cli(tmp_path):
    data = _tone_folder(tmp_path / "tones")
    task = f"folder:{data}"
    records = evaluate(["logmel-stats", "mfcc-stats"], [task], None, tmp_path / "out", seeds=2, progress=False)
    assert [r["model"] for r in records] == ["logmel-stats", "mfcc-stats"]
    for r in records:
        assert r["metric"] == "accuracy" and len(r["runs"]) == 10 and r["embedding_dim"] in (128, 40)
        assert r["mean"] >= 0.9 and r["chance"] < 0.5 and r["std"] >= 0
        assert r["mean"] == pytest.approx(np.mean([run["accuracy"] for run in r["runs"]]))
        assert {run["fold"] for run in r["runs"]} == {f"fold{k}" for k in range(1, 6)}
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["model"] for line in lines] == ["logmel-stats", "mfcc-stats"]
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| logmel-stats |" in table and f"{100 * records[0]['mean']:.1f} ±" in table
    for name in ("accuracy.png", f"confusion-{_slug(task)}.png", f"projection-{_slug(task)}.png"):
        assert (tmp_path / "out" / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    # the CLI appends to the same results file, reusing the cached embeddings
    from avssl.cli import main

    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "embeddings").rglob("*.npz")}

    rc = main(["eval", "logmel-stats", "--task", task, "--out", str(tmp_path / "out"), "--seeds", "1",
               "--no-baselines", "--no-plots"])
    assert rc == 0
    last = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert last["model"] == "logmel-stats" and last["seeds"] == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out" / "embeddings").rglob("*.npz")} == cached


def _slug(text):
    from avssl.evaluate.reports import slug

    return slug(text)


def test_model_specs(tmp_path):
    assert with_baselines(["a.pt"]) == ["a.pt", "random-init:a.pt", "logmel-stats", "mfcc-stats"]
    assert with_baselines(["logmel-stats"]) == ["logmel-stats", "mfcc-stats"]
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        resolve_model(str(tmp_path / "missing.pt"))


def test_random_init_is_seeded_and_probeable(tmp_path):
    torch.set_num_threads(1)  # tiny convolutions: extra threads only spin on a busy 2-core machine
    a, b = resolve_model("random-init:tiny"), resolve_model("random-init:tiny")
    assert a.cache_id == b.cache_id and a.cache_id != resolve_model("random-init:tiny", seed=1).cache_id
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=n).astype(np.float32) * 0.1 for n in (SR // 2, SR // 3)]
    ea, eb = a.encoder.embed(clips, SR), b.encoder.embed(clips, SR)
    np.testing.assert_allclose(ea, eb, rtol=1e-5, atol=1e-6)
    assert ea.shape == (2, a.encoder.embedding_dim) and np.isfinite(ea).all()
    other = resolve_model("random-init:tiny", seed=1).encoder.embed(clips, SR)  # another seed, other weights
    assert np.abs(other - ea).max() > 1e-3


def test_checkpoint_beside_its_baselines(tmp_path):
    from avssl.checkpoint import save_checkpoint
    from avssl.config import load_config
    from avssl.models import build_model

    torch.set_num_threads(1)
    cfg = load_config("tiny")
    torch.manual_seed(5)
    ckpt = save_checkpoint({"config": cfg.to_dict(), "model": build_model(cfg).state_dict()}, tmp_path / "m.pt")
    models = with_baselines([str(ckpt)])
    _tone_folder(tmp_path / "tones" / "train", per_class=4)
    _tone_folder(tmp_path / "tones" / "test", per_class=2)
    records = evaluate(models, [f"folder:{tmp_path / 'tones'}"], None, tmp_path / "out", seeds=1, progress=False,
                       plots=False)
    assert [r["model"] for r in records] == models
    by = {r["model"]: r for r in records}
    # the trained-or-not checkpoint and its random-init twin have the same architecture, different weights
    assert by[str(ckpt)]["embedding_dim"] == by[f"random-init:{ckpt}"]["embedding_dim"]
    assert by[str(ckpt)]["model_id"] != by[f"random-init:{ckpt}"]["model_id"]
    assert all(r["mean"] > r["chance"] for r in records)


@pytest.fixture(scope="session")
def fsdd_logmel(shared_data, tmp_path_factory):
    """logmel-stats embeddings of all 3000 real FSDD recordings (official split)."""
    task = load_task("fsdd-digits", shared_data)
    ref = resolve_model("logmel-stats")
    return task, embed_task(ref, task, tmp_path_factory.mktemp("fsdd-cache"), progress=False)


def test_real_fsdd_digits_logmel_far_above_chance(fsdd_logmel):
    task, x = fsdd_logmel
    assert sum(ex.split == "test" for ex in task.examples) == 300
    summary, confusion = run_probes(task, x, seeds=1)
    assert summary["chance"] <= 0.15
    assert summary["mean"] > 0.8, summary  # ~0.95 measured; chance is 0.1
    assert confusion.sum() == 300 and np.trace(confusion) / 300 == pytest.approx(summary["mean"])


def test_cli_suite_shared_on_a_tiny_copy_of_the_layout(tmp_path):
    from avssl.cli import main

    rng = np.random.default_rng(0)
    t = np.arange(SR // 5) / SR

    def write(path, f0):
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_audio(path, (0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.normal(size=t.size)).astype(np.float32), SR)

    for digit in range(2):
        for s, spk in enumerate(("jackson", "theo")):
            for idx in (0, 1, 5, 6, 7, 8):
                name = f"{digit}_{spk}_{idx}.wav"
                write(tmp_path / "data" / "fsdd" / "recordings" / name, 300 + 400 * digit + 50 * s)
    for c, cls in enumerate(("cello", "flute")):
        for i in range(5):
            write(tmp_path / "data" / "instruments" / cls / f"n{i}.mp3", 200 + 600 * c)
    rc = main(["eval", "--suite", "shared", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
               "--seeds", "1", "--no-plots"])
    assert rc == 0
    recs = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["task"], r["model"]) for r in recs] == [
        (task, model)
        for task in ("fsdd-digits", "fsdd-speakers", "instruments")
        for model in ("logmel-stats", "mfcc-stats")
    ]
    assert {r["task"]: r["num_examples"] for r in recs} == {"fsdd-digits": 24, "fsdd-speakers": 24, "instruments": 10}
    # fsdd-digits and fsdd-speakers share one cache of the same clips
    assert sorted(p.parent.name for p in (tmp_path / "out" / "embeddings").rglob("train.npz")) == ["fsdd", "fsdd"]
    assert main(["eval", "--task", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["eval", "--task", "esc50", "--data-root", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def test_multilabel_audioset_layout_end_to_end(tmp_path):
    """Clips mixing up to three tones; each tone is one AudioSet label: mAP/d-prime reported, plots drawn."""
    rng = np.random.default_rng(0)
    root = tmp_path / "audioset"
    mids, freqs = ["/m/a", "/m/b", "/m/c"], [300.0, 900.0, 2500.0]
    (root / "clips").mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n" + "".join(
        f'{i},{m},"tone {int(f)}"\n' for i, (m, f) in enumerate(zip(mids, freqs))))
    t = np.arange(SR // 4) / SR
    for csv_name, n in (("balanced_train_segments.csv", 40), ("eval_segments.csv", 16)):
        lines = ["# header", "# header", "# YTID, start_seconds, end_seconds, positive_labels"]
        for i in range(n):
            on = rng.random(3) < 0.5
            on[rng.integers(3)] = True  # every clip has at least one label
            ytid = f"{csv_name[:4]}{i:07d}"
            wave = sum(0.2 * np.sin(2 * np.pi * f * t) for f, o in zip(freqs, on) if o) + 0.01 * rng.normal(size=t.size)
            encode_audio(root / "clips" / f"{ytid}_0.000.wav", wave.astype(np.float32), SR)
            lines.append(f'{ytid}, 0.000, 10.000, "{",".join(m for m, o in zip(mids, on) if o)}"')
        (root / csv_name).write_text("\n".join(lines) + "\n")
    (rec,) = evaluate(["logmel-stats"], ["audioset"], tmp_path, tmp_path / "out", seeds=2, progress=False)
    assert rec["metric"] == "mAP" and "accuracy" not in rec["metrics"]
    assert rec["mean"] > 0.9 and rec["chance"] < 0.8 and rec["metrics"]["d_prime"]["mean"] > 2
    assert (tmp_path / "out" / "plots" / "projection-audioset.png").is_file()
    assert not (tmp_path / "out" / "plots" / "confusion-audioset.png").exists()


def test_random_init_of_a_yaml_config_and_feature_choice(tmp_path):
    """A YAML config is an architecture, not a checkpoint; ``features`` changes the embeddings and the cache id."""
    from avssl.config import load_config, save_config

    torch.set_num_threads(1)
    path = save_config(load_config("tiny"), tmp_path / "arch.yaml")
    pooled = resolve_model(f"random-init:{path}")
    layers = resolve_model(f"random-init:{path}", features="layers")
    assert pooled.cache_id == resolve_model("random-init:tiny").cache_id  # same architecture, same init
    assert layers.cache_id == pooled.cache_id + "-layers"
    clip = np.random.default_rng(0).normal(size=SR).astype(np.float32) * 0.1
    assert pooled.encoder.embed([clip], SR).shape[1] == pooled.encoder.embedding_dim == 64
    np.testing.assert_array_equal(pooled.encoder.embed([clip], SR),
                                  resolve_model("random-init:tiny").encoder.embed([clip], SR))
    assert layers.encoder.embed([clip], SR).shape[1] == layers.encoder.embedding_dim > 64


def test_model_from_checkpoint_and_random_model(tmp_path):
    """A checkpoint rebuilds its model (all views or some) with its weights; random init is seeded."""
    from avssl.checkpoint import model_from_checkpoint, random_model, save_checkpoint
    from avssl.config import load_config

    cfg = load_config("tiny")
    trained = random_model(cfg, seed=3)
    save_checkpoint({"config": cfg.to_dict(), "model": trained.state_dict()}, tmp_path / "c.pt")
    model, cfg2 = model_from_checkpoint(tmp_path / "c.pt")
    assert cfg2 == cfg and not model.training
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    spec_only, _ = model_from_checkpoint(tmp_path / "c.pt", views=["spec"])
    assert spec_only.views == ["spec"]
    torch.testing.assert_close(spec_only.towers["spec"].blocks[0].conv1.weight, trained.towers["spec"].blocks[0].conv1.weight)
    assert not torch.equal(random_model(cfg, 0).towers["spec"].blocks[0].conv1.weight,
                           trained.towers["spec"].blocks[0].conv1.weight)


def test_audio_cache_decodes_once_and_drops_the_least_recently_used(tmp_path, monkeypatch):
    import avssl.evaluate.run as ev

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], np.full(16000, 0.1 * (i + 1), np.float32), 16000)
    decoded = []
    real = ev.load_audio
    monkeypatch.setattr(ev, "load_audio", lambda p, sr: decoded.append(p.name) or real(p, sr))
    cache = ev.AudioCache(max_bytes=2 * 16000 * 4)  # room for two 1 s clips of float32
    a0 = cache(paths[0], 16000)
    np.testing.assert_array_equal(a0, real(paths[0], 16000))
    cache(paths[1], 16000)
    cache(paths[0], 16000)  # a hit: clip 0 becomes the most recently used
    cache(paths[2], 16000)  # over budget: clip 1, the least recently used, goes
    cache(paths[0], 16000)
    cache(paths[1], 16000)
    assert decoded == ["0.wav", "1.wav", "2.wav", "1.wav"]
