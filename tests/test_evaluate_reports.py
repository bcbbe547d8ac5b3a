import numpy as np

from avssl.evaluate.reports import markdown_table, project2d, slug


def _rec(model, task, mean, std, chance=0.1):
    return {"model": model, "task": task, "metric": "accuracy", "mean": mean, "std": std, "chance": chance,
            "split": f"{task} split", "folds": 1, "seeds": 3}


def test_markdown_table_rows_models_columns_tasks():
    table = markdown_table([_rec("a", "t1", 0.5, 0.01), _rec("b", "t1", 0.25, 0.0), _rec("a", "t2", 1.0, 0.0, 0.5)])
    lines = table.splitlines()
    assert lines[0] == "| model | t1 (accuracy, %) | t2 (accuracy, %) |"
    assert lines[2] == "| a | 50.0 ± 1.0 | 100.0 ± 0.0 |" and lines[3] == "| b | 25.0 ± 0.0 | - |"
    assert lines[4] == "| *chance (majority class)* | 10.0 | 50.0 |"
    assert "- **t2**: t2 split; 1 fold(s) x 3 seeds" in lines


def test_slug_is_file_safe_and_injective_on_changed_text():
    assert slug("plain-name_1.0") == "plain-name_1.0"
    a, b = slug("a/b c"), slug("a b/c")
    assert a != b and a.startswith("a_b_c-") and all(ch.isalnum() or ch in "._-" for ch in a)


def test_project2d_separates_classes_with_lda():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, 8)) + 5.0 * np.eye(8)[y]
    train, test = np.arange(0, 60, 2), np.arange(1, 60, 2)
    p, method = project2d(x, y, train, test)
    assert p.shape == (30, 2) and method.startswith("LDA")
    centres = np.stack([p[y[test] == k].mean(0) for k in range(3)])
    spread = max(p[y[test] == k].std(0).max() for k in range(3))
    assert min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3)) > 3 * spread
