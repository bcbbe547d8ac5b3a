"""``avssl sweep``: a 2-cell grid of a few steps writes every output; a rerun retrains nothing; a grown
grid reuses finished cells; a failing cell is recorded while the others finish; ``--cell K``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_data_stream import FPS, SIZE, SR, planted_clip, write_shards

from avssl.cli import main
from avssl.sweep.run import parse_grid, split_values

BASE = ["--config", "tiny", "--seeds", "1", "--probe-seeds", "1", "--no-progress",
        "--set", f"audio.sample_rate={SR}", "--set", f"video.fps={FPS}", "--set", f"video.size={SIZE}",
        "--set", "data.crop_seconds=1.0", "--set", "data.batch_size=4", "--set", "data.num_workers=0",
        "--set", "train.steps=2", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    """Shards of planted clips, and a ``csv:`` task of two tone classes (6 train / 4 test files)."""
    root = tmp_path_factory.mktemp("sweep-world")
    shards = write_shards(root / "shards", [planted_clip(i) for i in range(16)], per_shard=8)
    rows = []
    for i in range(10):
        c = i % 2
        t = np.arange(SR) / SR
        noise = np.random.default_rng(i).standard_normal(SR)
        sf.write(root / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 600 * c) * t) + 0.05 * noise).astype(np.float32), SR)
        rows.append(f"{i}.wav,{'ab'[c]},{'test' if i < 4 else 'train'}\n")
    (root / "task.csv").write_text("path,label,split\n" + "".join(rows))
    return shards, root / "task.csv"


def _sweep(world, out: Path, *args: str) -> int:
    shards, task = world
    return main(["sweep", *args, "--data", str(shards), "--tasks", f"csv:{task}", "--out", str(out), *BASE])


def _cells(out: Path) -> dict[str, dict]:
    return {json.loads(p.read_text())["name"]: json.loads(p.read_text()) for p in out.glob("cells/*/cell.json")}


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in [*out.glob("runs/*/checkpoint.pt"), *out.glob("cells/*/cell.json")]}


def test_grid_writes_every_output_and_reruns_nothing(world, tmp_path):
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "augment.mix=none,mixup") == 0
    cells = _cells(out)
    assert set(cells) == {"augment.mix=none", "augment.mix=mixup", "logmel-stats", "mfcc-stats", "random-init"}
    assert all(c["status"] == "done" for c in cells.values())
    for name in ("augment.mix=none", "augment.mix=mixup"):
        assert cells[name]["steps"] == 2 and cells[name]["gflops_per_step"] > 0
        assert cells[name]["tflops"] == pytest.approx(2 * cells[name]["gflops_per_step"] / 1e3)
    assert len(list(out.glob("runs/*/checkpoint.pt"))) == 2  # two configs, two runs
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {r["task"] for r in rows} == {f"csv:{world[1]}"}
    table = (out / "results.md").read_text()
    for name in cells:
        assert f"| {name} | 1 |" in table
    for plot in ("quality_vs_compute.png", "quality_vs_steps.png", "tasks.png"):
        assert (out / "plots" / plot).stat().st_size > 0
    # the baseline cell gives what `avssl eval` gives for the same model, task and probe seed
    assert main(["eval", "logmel-stats", "--no-baselines", "--task", f"csv:{world[1]}", "--seeds", "1",
                 "--out", str(tmp_path / "eval"), "--no-plots"]) == 0
    ref = json.loads((tmp_path / "eval" / "results.jsonl").read_text().splitlines()[0])
    assert cells["logmel-stats"]["results"][f"csv:{world[1]}"]["mean"] == pytest.approx(ref["mean"])

    before, table_before = _mtimes(out), table
    assert _sweep(world, out, "--grid", "augment.mix=none,mixup") == 0
    assert _mtimes(out) == before  # nothing retrained, re-embedded or rewritten
    assert (out / "results.md").read_text() == table_before
    assert _sweep(world, out, "--grid", "augment.mix=none,mixup,mixback") == 0  # a grown grid
    after = _mtimes(out)
    assert {k: after[k] for k in before} == before and len(list(out.glob("runs/*/checkpoint.pt"))) == 3
    assert "augment.mix=mixback" in _cells(out)
    other = tmp_path / "other-shards"  # the same grid on other data: new training cells, same baselines
    shutil.copytree(world[0], other)
    assert main(["sweep", "--grid", "augment.mix=none", "--data", str(other), "--tasks", f"csv:{world[1]}",
                 "--out", str(out), *BASE]) == 0
    assert len(list(out.glob("runs/*/checkpoint.pt"))) == 4 and len(list(out.glob("cells/*"))) == 7


def test_failing_cell_is_recorded_and_the_others_finish(world, tmp_path):
    out = tmp_path / "sweep"
    rc = _sweep(world, out, "--grid", "model.views=[spec],[spec,wave]", "--set", "loss.pairs=[spec-wave]")
    assert rc == 1
    cells = _cells(out)
    bad, good = cells["model.views=['spec']"], cells["model.views=['spec', 'wave']"]
    assert bad["status"] == "failed" and "wave" in bad["error"] and "Traceback" in bad["traceback"]
    assert good["status"] == "done" and good["steps"] == 2
    assert "Failed cells" in (out / "results.md").read_text()


def test_one_cell_by_index(world, tmp_path):
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "augment.mix=none,mixup", "--cell", "4") == 0
    cells = _cells(out)
    assert list(cells) == ["augment.mix=mixup"] and cells["augment.mix=mixup"]["status"] == "done"
    assert _sweep(world, out, "--grid", "augment.mix=none,mixup", "--cell", "9") == 2  # out of range


def test_grid_values():
    assert split_values("16,32,[a,b],{x: 1}") == [16, 32, ["a", "b"], {"x": 1}]
    assert parse_grid(["model.views=[spec],[spec,wave]", "augment.mix=none"]) == {
        "model.views": [["spec"], ["spec", "wave"]], "augment.mix": ["none"]}
    with pytest.raises(ValueError, match="--grid"):
        parse_grid(["video.size"])


def test_bad_grid_or_recipe_fails_before_any_work(world, tmp_path, caplog):
    assert _sweep(world, tmp_path / "a", "--grid", "augment.nope=1,2") == 2
    assert "unknown config key 'augment.nope'" in caplog.text
    assert _sweep(world, tmp_path / "b", "no-such-recipe") == 2
    assert "recipes: batch-mixing, crops, modality, resolution, scaling" in caplog.text
    shards, _ = world
    assert main(["sweep", "--grid", "augment.mix=none", "--data", str(shards), "--tasks", "no-such-task",
                 "--out", str(tmp_path / "c"), *BASE]) == 2
    assert "unknown task 'no-such-task'" in caplog.text
    assert not list(tmp_path.glob("*/cells"))


def test_lock_of_a_dead_process_is_taken_over(world, tmp_path):
    """A run folder locked by a process that was killed (its pid is gone) is trained, not waited on."""
    import shutil
    import socket
    import subprocess
    import sys

    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "augment.mix=none") == 0
    (run,) = out.glob("runs/*")
    shutil.rmtree(run)
    shutil.rmtree(out / "cells")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.mkdir()
    (run / ".lock").write_text(f"{socket.gethostname()} {gone.stdout.strip()}")  # as a killed process leaves it
    assert _sweep(world, out, "--grid", "augment.mix=none") == 0
    assert (run / "done.json").is_file() and not (run / ".lock").exists()
    assert _cells(out)["augment.mix=none"]["steps"] == 2


def test_select_layer_cells_share_one_run_and_record_their_readouts(world, tmp_path):
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "embed.select_layer=false,true", "--set", "embed.features=layers",
                  "--set", "model.views=[spec]", "--set", "loss.pairs=[spec-spec]") == 0
    cells = _cells(out)
    task = f"csv:{world[1]}"
    plain, chosen = cells["embed.select_layer=False"], cells["embed.select_layer=True"]
    assert plain["run"] == chosen["run"] and len(list(out.glob("runs/*/checkpoint.pt"))) == 1
    assert "readouts" not in plain["results"][task]
    assert sum(chosen["results"][task]["readouts"].values()) == 1  # one fold x one probe seed
    ri = [c for name, c in cells.items() if name.startswith("random-init")]
    assert len(ri) == 2 and sum("readouts" in c["results"][task] for c in ri) == 1  # read the same two ways


def test_retrieval_column_is_added_to_finished_cells_without_retraining(world, tmp_path):
    from test_evaluate_retrieval import _videos

    videos = tmp_path / "videos"
    videos.mkdir()
    _videos(videos, 4)
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "augment.mix=none") == 0
    ckpts = {str(p): p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")}
    assert _sweep(world, out, "--grid", "augment.mix=none", "--retrieval", str(videos)) == 0
    assert {str(p): p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")} == ckpts  # nothing retrained
    cells = _cells(out)
    res = cells["augment.mix=none"]["retrieval"][str(videos)]
    assert res["num_clips"] == 4 and res["chance_top5"] == 1.0 and res["skipped"] == 0
    from avssl.checkpoint import model_from_checkpoint
    from avssl.evaluate.retrieval import evaluate_retrieval

    ref = evaluate_retrieval(*model_from_checkpoint(next(out.glob("runs/*/checkpoint.pt"))), str(videos), progress=False)
    assert res["a2v_median_rank"] == ref["a2v_median_rank"] and res["v2a_top1"] == ref["v2a_top1"]
    assert not cells["logmel-stats"].get("retrieval")  # baselines have no video tower
    table = (out / "results.md").read_text()
    assert f"a2v top-5 ({videos})" in table and "| augment.mix=none | 1 |" in table
    row = next(line for line in table.splitlines() if line.startswith("| augment.mix=none |"))
    assert "100.0 ± 0.0" in row
    before = _mtimes(out)
    assert _sweep(world, out, "--grid", "augment.mix=none", "--retrieval", str(videos)) == 0
    assert _mtimes(out) == before  # a rerun with the same sets does nothing
    assert _sweep(world, out, "--grid", "augment.mix=none", "--retrieval", str(tmp_path / "nowhere")) == 2
    assert _mtimes(out) == before  # a missing set fails before any cell runs


def test_cells_differing_only_in_the_window_share_a_run_but_not_embeddings(world, tmp_path):
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "embed.window_seconds=0.5,1.0", "--set", "model.views=[spec]",
                  "--set", "loss.pairs=[spec-spec]") == 0
    cells = _cells(out)
    half, whole = cells["embed.window_seconds=0.5"], cells["embed.window_seconds=1.0"]
    assert half["run"] == whole["run"] and len(list(out.glob("runs/*/checkpoint.pt"))) == 1
    # each cell is read with its own window: two embedding caches of the one checkpoint, with other values
    caches = sorted(p for p in (out / "embeddings").iterdir() if p.name.startswith("checkpoint"))
    assert len(caches) == 2
    first, second = (np.load(next(c.rglob("test.npz")))["embeddings"] for c in caches)
    assert first.shape == second.shape and not np.allclose(first, second)
    # the random-init baselines of the two windows are two architectures, each with its own cache too
    assert len([p for p in (out / "embeddings").iterdir() if p.name.startswith("random-init")]) == 2


def test_variants_with_the_same_config_are_refused(world, tmp_path, caplog):
    assert _sweep(world, tmp_path / "dup", "--grid", "data.batch_size=4,4") == 2
    assert "resolve to the same config" in caplog.text and not (tmp_path / "dup" / "cells").exists()


def test_finished_cells_are_evaluated_again_for_other_probe_seeds_or_data(world, tmp_path, caplog):
    out = tmp_path / "sweep"
    assert _sweep(world, out, "--grid", "augment.mix=none") == 0
    first = _cells(out)["augment.mix=none"]
    from avssl.sweep.run import code_version

    assert first["probe_seeds"] == 1 and first["code"] == code_version()
    ckpts = {str(p): p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")}
    shards, task = world
    more = [a if a != "1" or BASE[i - 1] != "--probe-seeds" else "2" for i, a in enumerate(BASE)]
    assert main(["sweep", "--grid", "augment.mix=none", "--data", str(shards), "--tasks", f"csv:{task}",
                 "--out", str(out), *more]) == 0
    again = _cells(out)["augment.mix=none"]
    assert again["probe_seeds"] == 2 and "evaluating again" in caplog.text
    assert {str(p): p.stat().st_mtime_ns for p in out.glob("runs/*/checkpoint.pt")} == ckpts  # not retrained
    moved = tmp_path / "root"  # the same task files under another data root: evaluated again
    moved.mkdir()
    assert main(["sweep", "--grid", "augment.mix=none", "--data", str(shards), "--tasks", f"csv:{task}",
                 "--data-root", str(moved), "--out", str(out), *more]) == 0
    assert _cells(out)["augment.mix=none"]["data_root"] == str(moved.resolve())
