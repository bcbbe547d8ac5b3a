"""The package layout (issue 27): imports run down the pipeline, inference code imports no training code,
no import cycle, and no file or function outgrows the house limits."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "avssl"

# The order of the stages: a module may import its own stage and the stages before it, never a later one.
RANK = {
    "avssl.config": 0, "avssl.overrides": 0, "avssl.pairs": 0, "avssl.atomic": 0,
    "avssl.media": 1, "avssl.data": 2, "avssl.ingest": 3, "avssl.models": 4, "avssl.checkpoint": 5,
    "avssl.train": 6, "avssl.embed": 7, "avssl.evaluate": 8, "avssl.finetune": 9, "avssl.sweep": 10,
    "avssl.demo": 11,
    "avssl.export": 12, "avssl.hear": 12, "avssl.cli": 12, "avssl.__main__": 12,
    # the root package holds ``__version__`` (imported everywhere) and the public API, which it imports lazily
    "avssl": 0,
}
# Inference code: what a user who only wants embeddings or tags imports.
INFERENCE = ("avssl.media", "avssl.models", "avssl.embed", "avssl.finetune.classifier", "avssl.hear", "avssl.export")
TRAINING = ("avssl.train", "avssl.data", "avssl.ingest.run", "avssl.ingest.progress", "avssl.evaluate")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = ["avssl", *path.relative_to(PKG).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _stage(module: str) -> str:
    """The key of :data:`RANK` that owns ``module`` (the longest matching prefix)."""
    best = max((k for k in RANK if module == k or module.startswith(k + ".")), key=len)
    return best


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Every ``avssl`` module ``path`` imports (in functions too, unless ``top_level_only``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "avssl":
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            for alias in node.names:  # ``from avssl.train import distributed`` imports a module
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "avssl"}
    return found


MODULES = _modules()


def test_every_module_belongs_to_a_stage():
    assert len(MODULES) > 50
    for module in MODULES:
        assert module == "avssl" or _stage(module) != "avssl", f"{module} is in no stage of RANK"


def test_imports_run_down_the_pipeline():
    bad = []
    for module, path in MODULES.items():
        if module == "avssl":  # the public API: ``avssl.load_model`` etc., imported on first use
            continue
        for target in _imports(path):
            if RANK[_stage(target)] > RANK[_stage(module)]:
                bad.append(f"{module} imports {target}")
    assert not bad, "a stage imports a later one:\n" + "\n".join(bad)


def test_inference_code_imports_no_training_code():
    bad = []
    for module, path in MODULES.items():
        if not module.startswith(INFERENCE):
            continue
        for target in _imports(path):
            if target.startswith(TRAINING):
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {m: {t for t in _imports(p, top_level_only=True) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            # importing a package's module imports the package itself first (its __init__, which imports nothing)
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_stage_packages_import_nothing_and_say_what_they_own():
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module not in ("avssl", "avssl.models"):
            tree = ast.parse(path.read_text())
            assert ast.get_docstring(tree), f"{path} has no docstring"
            assert not _imports(path), f"{path} imports modules (keep stage packages import-free)"


def test_files_and_functions_stay_small():
    bad = []
    for module, path in MODULES.items():
        text = path.read_text()
        if text.count("\n") > 400:
            bad.append(f"{path}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                start = body[1].lineno if doc and len(body) > 1 else body[0].lineno
                if node.end_lineno - start + 1 > 60:
                    bad.append(f"{path}:{node.lineno} {node.name}: {node.end_lineno - start + 1} lines")
    assert not bad, "over the limits (400 lines a file, 60 a function body):\n" + "\n".join(bad)
