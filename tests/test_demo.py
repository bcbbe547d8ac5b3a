"""``avssl demo``: retrieval metrics on a planted model, and a one-minute end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from avssl.config import load_config
from avssl.demo.run import demo_configs, run_demo, run_demo_pipeline
from avssl.train.retrieval import retrieval
from avssl.data.shards import Clip

SR, FPS = 16000, 8.0


class OneHot(torch.nn.Module):
    """Audio and video of clip i both embed to one-hot(i), optionally permuting the video side."""

    def __init__(self, n: int, perm: list[int] | None = None):
        super().__init__()
        self.n, self.perm = n, perm

    def forward(self, audio, frames):
        a = torch.nn.functional.one_hot(audio.mean(1).round().long(), self.n).float()
        v_idx = frames.float().mean((1, 2, 3, 4)).round().long()
        if self.perm is not None:
            v_idx = torch.tensor(self.perm)[v_idx]
        return {"spec": a + 0.01, "video": torch.nn.functional.one_hot(v_idx, self.n).float() + 0.01}


def _clips(n: int) -> list[Clip]:
    return [Clip(f"v{i}-0000", np.full(2 * SR, float(i), np.float32), SR, np.full((16, 8, 8, 3), i, np.uint8), FPS)
            for i in range(n)]


def test_retrieval_metrics_on_planted_embeddings():
    cfg = load_config("tiny", {"video": {"fps": FPS}, "data": {"crop_seconds": 1.0}})
    clips = _clips(10)
    labels = ["a", "b"] * 5
    res = retrieval(OneHot(10), cfg, clips, labels=labels, batch_size=4)
    assert res["a2v_top1"] == 1.0 and res["a2v_top5"] == 1.0 and res["v2a_top1"] == 1.0 and res["class_top1"] == 1.0
    assert res["chance_top1"] == pytest.approx(0.1) and res["chance_top5"] == pytest.approx(0.5)
    assert res["chance_class_top1"] == pytest.approx(0.5)
    np.testing.assert_array_equal(res["ranks"], np.ones(10))
    assert res["a2v_median_rank"] == 1 and res["chance_median_rank"] == 5.5
    # video i now looks like clip i+1 (mod 10): no query finds its own video, and every label is wrong
    shifted = retrieval(OneHot(10, perm=[(i + 1) % 10 for i in range(10)]), cfg, clips, labels=labels)
    assert shifted["a2v_top1"] == 0.0 and shifted["v2a_top1"] == 0.0 and shifted["class_top1"] == 0.0
    assert shifted["similarity"].shape == (10, 10)
    # a collapsed model (every video embeds the same) retrieves nothing: ties count against the query
    collapsed = retrieval(OneHot(10, perm=[0] * 10), cfg, clips, labels=labels)
    assert collapsed["a2v_top1"] == 0.0 and collapsed["a2v_top5"] == 0.0
    assert collapsed["a2v_median_rank"] == 10


def test_demo_configs_differ_only_in_the_video():
    cfgs = demo_configs(seed=5, clip_seconds=2.0, overrides=["data.batch_size=8"])
    av, ao = cfgs["audio-visual"].to_dict(), cfgs["audio-only"].to_dict()
    assert av["model"].pop("views") == ["spec", "wave", "video"] and ao["model"].pop("views") == ["spec", "wave"]
    assert ao["loss"].pop("pairs") == ["spec-wave"] and "spec-video" in av["loss"].pop("pairs")
    assert av == ao
    assert av["train"]["seed"] == 5 and av["data"]["batch_size"] == 8 and av["ingest"]["clip_seconds"] == 2.0
    assert av["data"]["crop_seconds"] <= 2.0 and av["augment"]["mix"] != "none"


def _small_demo(out, seed: int = 1):
    return run_demo_pipeline(
        out, steps=4, seed=seed, world={"num_classes": 3, "clips_per_class": 6, "seconds": 2.0},
        overrides=["data.batch_size=8", "data.num_workers=0", "train.log_every=1"], probe_seeds=1, progress=False,
    )


def test_small_demo_writes_every_report_file_and_repeats_exactly(tmp_path):
    """Budgets are steps: both runs train exactly ``steps``, and a rerun gives the same numbers."""
    out = tmp_path / "demo"
    results = _small_demo(out)
    report = out / "report"
    for name in ["summary.md", "results.json", "curves.png", "probe.png", "retrieval.png", "configs/world.json",
                 "configs/audio-visual.yaml", "configs/audio-only.yaml"]:
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    saved = json.loads((report / "results.json").read_text())
    assert saved["seed"] == 1 and saved["num_train_clips"] == 12 and saved["num_test_clips"] == 6
    assert [r["name"] for r in saved["probe"]] == ["audio-visual", "audio-only", "random-init", "logmel-stats"]
    for row in saved["probe"]:
        assert row["chance"] == pytest.approx(1 / 3)
    runs = saved["pretrain"]
    assert runs["audio-visual"]["steps"] == runs["audio-only"]["steps"] == saved["steps"] == 4
    # the video tower costs compute: the audio-visual step counts more FLOPs than the audio-only one
    assert runs["audio-visual"]["gflops_per_step"] > runs["audio-only"]["gflops_per_step"] > 0
    assert runs["audio-visual"]["tflops"] == pytest.approx(4 * runs["audio-visual"]["gflops_per_step"] / 1e3)
    av = yaml.safe_load((report / "configs" / "audio-visual.yaml").read_text())
    ao = yaml.safe_load((report / "configs" / "audio-only.yaml").read_text())
    assert "video" in av["model"]["views"] and "video" not in ao["model"]["views"]
    assert av["train"]["steps"] == ao["train"]["steps"] == 4
    summary = (report / "summary.md").read_text()
    assert "| audio-visual |" in summary and "![retrieval](retrieval.png)" in summary
    assert "4 optimizer steps per pretraining run" in summary
    assert results["probe"] == saved["probe"]
    # the report's numbers are the runs' own: the last logged loss, and the evaluation's records
    for name in ("audio-visual", "audio-only"):
        logged = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        assert runs[name]["final_loss"] == logged[-1]["loss"] and logged[-1]["step"] == 4
    records = {r["model"]: r for r in map(json.loads, (out / "eval" / "results.jsonl").read_text().splitlines())}
    for row in saved["probe"]:
        assert (row["mean"], row["std"], row["chance"]) == tuple(records[row["model"]][k] for k in ("mean", "std", "chance"))
    again = _small_demo(tmp_path / "again")
    def scores(res):
        return [(r["name"], r["mean"], r["std"]) for r in res["probe"]]

    assert scores(again) == scores(results)
    assert again["retrieval"] == results["retrieval"]
    for name in ("audio-visual", "audio-only"):
        assert again["pretrain"][name]["final_loss"] == results["pretrain"][name]["final_loss"]


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    import argparse

    from avssl.demo.run import add_demo_arguments

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    assert run_demo(parser.parse_args(["--out", str(tmp_path / "x")])) == 2
    assert "--force" in capsys.readouterr().out
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_results_table_renders_the_numbers():
    from avssl.demo.report import results_table

    results = {"probe": [{"name": "audio-visual", "mean": 0.5, "std": 0.25, "chance": 0.125}],
               "retrieval": {"audio-visual": {"a2v_top1": 0.5, "a2v_top5": 0.75, "chance_top1": 0.1, "chance_top5": 0.5},
                             "random-init": {"a2v_top1": 0.0, "a2v_top5": 0.25, "chance_top1": 0.1, "chance_top5": 0.5}}}
    assert results_table(results).splitlines()[2:] == [
        "| audio-visual | 50.0 ± 25.0 | 50.0 | 75.0 |",
        "| random-init | - | 0.0 | 25.0 |",
        "| *chance* | 12.5 | 10.0 | 50.0 |",
    ]


@pytest.mark.parametrize("flag", [[], ["--no-progress"]])
def test_cli_no_progress_reaches_every_stage(tmp_path, monkeypatch, flag):
    """``avssl demo --no-progress`` (as ``pretrain``, ``finetune``, ``eval``) turns off the bars of every stage the demo
    runs: the stages are stubbed here, recording the ``progress`` they are given, and the run stops after the probes."""
    import argparse

    from avssl.demo import run as demo_run
    from avssl.demo.run import add_demo_arguments

    seen = {}

    class Stop(Exception):
        pass

    def stage(name, result):
        def record(*args):
            seen[name] = args[-1]  # each stage takes ``progress`` last
            if result is Stop:
                raise Stop
            return result
        return record

    monkeypatch.setattr(demo_run, "_demo_data", stage("world", (tmp_path, [], [])))
    monkeypatch.setattr(demo_run, "_ingest_splits", stage("ingest", ({}, tmp_path)))
    monkeypatch.setattr(demo_run, "_pretrain_runs", stage("pretrain", {}))
    monkeypatch.setattr(demo_run, "_copy_configs", lambda runs, folder: None)
    monkeypatch.setattr(demo_run, "_probe_runs", stage("probe", Stop))
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser)
    with pytest.raises(Stop):
        run_demo(parser.parse_args(["--out", str(tmp_path / "demo"), *flag]))
    assert seen == dict.fromkeys(("world", "ingest", "pretrain", "probe"), not flag)
