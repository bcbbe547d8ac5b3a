"""Per-seed paired differences between sweep variants: is A ahead of B by more than the seeds' noise?

Cells of one seed share everything but the change (same data, steps, batch, seed), so the difference
A - B is taken seed by seed and its mean and standard deviation (numpy ddof=0, as the sweep table) are
reported; "ahead" means the mean exceeds twice that std. Also, per task, every trained variant against
the random-init baseline of the same seed, and each audio-visual variant's held-out retrieval.

    python experiments/paired_diff.py SWEEP_OUT \
        --pair "audio-visual + two-crop (spec-video, spec-spec)" "audio-only two-crop (spec-spec)" \
        --pair "audio-visual + multi-format" "audio-only multi-format (spec-wave)"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _cells(out: Path) -> dict[tuple[str, int], dict]:
    cells = {}
    for path in sorted(out.glob("cells/*/cell.json")):
        r = json.loads(path.read_text())
        if r.get("status") == "done":
            cells[(r["name"], r["seed"])] = r
    return cells


def _score(cell: dict, task: str | None, tasks: list[str]) -> float | None:
    res = cell["results"]
    if task is not None:
        return 100 * res[task]["mean"] if task in res else None
    return statistics.fmean(100 * res[t]["mean"] for t in tasks) if all(t in res for t in tasks) else None


def _ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):+.2f} ± {statistics.pstdev(xs) if len(xs) > 1 else 0.0:.2f}" if xs else "-"


def paired(cells: dict, a: str, b: str, task: str | None, tasks: list[str]) -> list[float]:
    """A - B per seed where both have the score."""
    diffs = []
    for (name, seed), cell in sorted(cells.items(), key=lambda kv: kv[0][1]):
        if name == a and (b, seed) in cells:
            sa, sb = _score(cell, task, tasks), _score(cells[(b, seed)], task, tasks)
            if sa is not None and sb is not None:
                diffs.append(sa - sb)
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--tasks", default="avepm,avepm-groups,fsdd-digits,fsdd-speakers,instruments")
    p.add_argument("--pair", action="append", default=[], nargs=2, metavar=("A", "B"))
    p.add_argument("--baseline", default="random-init")
    p.add_argument("--retrieval", default="avepm")
    args = p.parse_args()
    tasks = args.tasks.split(",")
    cells = _cells(args.sweep)
    print("## Paired differences on the mean over tasks (A - B per seed)\n")
    print("| A | B | per seed | mean ± std | A ahead by > 2 std |")
    print("|---|---|---|---|---|")
    for a, b in args.pair:
        d = paired(cells, a, b, None, tasks)
        mean = statistics.fmean(d) if d else float("nan")
        std = statistics.pstdev(d) if len(d) > 1 else 0.0
        verdict = "yes" if len(d) > 1 and mean > 2 * std else "no"
        print(f"| {a} | {b} | {' / '.join(f'{x:+.2f}' for x in d)} | {_ms(d)} | {verdict} (n={len(d)}) |")
    trained = sorted({n for (n, _), c in cells.items() if c["kind"] == "train"})
    print(f"\n## Each trained variant minus {args.baseline} of the same seed, per task (mean ± std over seeds)\n")
    print("| variant | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    base_below = {t: [_score(c, t, tasks) for (n, _), c in cells.items() if n == args.baseline] for t in tasks}
    for name in trained:
        row = []
        for t in tasks:
            d = paired(cells, name, args.baseline, t, tasks)
            mark = "" if not d or statistics.fmean(d) > 2 * (statistics.pstdev(d) if len(d) > 1 else 0.0) else " (not > 2 std)"
            row.append(_ms(d) + mark)
        print(f"| {name} | " + " | ".join(row) + " |")
    print(f"\n{args.baseline} per task: " + ", ".join(
        f"{t} {statistics.fmean(v):.1f}" for t, v in base_below.items() if v and all(x is not None for x in v)))
    print(f"\n## Held-out audio -> video retrieval ({args.retrieval})\n")
    print("| variant | seeds | a2v top-1 | a2v top-5 | a2v median rank | v2a top-5 | chance top-5 / median rank |")
    print("|---|---|---|---|---|---|---|")
    for name in trained:
        rs = [c["retrieval"][args.retrieval] for (n, _), c in cells.items()
              if n == name and args.retrieval in c.get("retrieval", {})]
        if not rs:
            continue

        def f(k: str, scale: float = 100.0) -> str:
            xs = [scale * r[k] for r in rs]
            return f"{statistics.fmean(xs):.1f} ± {statistics.pstdev(xs) if len(xs) > 1 else 0.0:.1f}"

        print(f"| {name} | {len(rs)} | {f('a2v_top1')} | {f('a2v_top5')} | {f('a2v_median_rank', 1.0)} | "
              f"{f('v2a_top5')} | {100 * rs[0]['chance_top5']:.1f} / {rs[0]['chance_median_rank']:.1f} |")


if __name__ == "__main__":
    main()
