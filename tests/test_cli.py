"""The command line: options before or after positional arguments; help lists commands and presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from avssl.cli import main

SR = 16000


def _task(root) -> str:
    rows = []
    for i in range(10):
        c = i % 2
        t = np.arange(SR // 2) / SR
        sf.write(root / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 600 * c) * t)).astype(np.float32), SR)
        rows.append(f"{i}.wav,{'ab'[c]},{'test' if i < 4 else 'train'}\n")
    (root / "task.csv").write_text("path,label,split\n" + "".join(rows))
    return f"csv:{root / 'task.csv'}"


def test_eval_takes_models_after_options(tmp_path):
    task = _task(tmp_path)
    out = tmp_path / "eval"
    assert main(["eval", "logmel-stats", "--no-baselines", "--task", task, "--seeds", "1", "--out", str(out),
                 "--no-plots", "mfcc-stats"]) == 0
    models = [json.loads(x)["model"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert models == ["logmel-stats", "mfcc-stats"]


def test_help_lists_commands_and_every_preset(capsys):
    assert main([]) == 0
    assert "eval" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    assert all(p in text for p in ("tiny", "cpu", "small", "paper"))
    with pytest.raises(SystemExit):
        main(["no-such-command"])
