"""The summary across folds of a cross-validation run as DVC experiments."""

import numpy as np

from sarcoma_seg.folds import fold_runs, summarize


def experiment(name: str, fold: int | None, lr: float, patients: int, dice: float) -> dict:
    """One experiment as `dvc exp show --json` lists it."""
    split = {"folds": 3 if fold is not None else None, "fold": fold or 0, "val": 1}
    params = {"split": split, "train": {"learning_rate": lr}}
    metrics = {
        "metrics/evaluate.json": {"data": {"test": {"patients": patients, "dice_3d_mean": dice}}}
    }
    data = {"params": {"params.yaml": {"data": params}}, "metrics": metrics}
    return {"revs": [{"name": name, "data": data}]}


def test_folds_group_by_everything_but_the_fold_and_weight_by_patients() -> None:
    shown = [
        {"rev": "workspace", "experiments": None},
        {
            "rev": "abc",
            "experiments": [
                experiment("f0", 0, 0.001, 2, 0.8),
                experiment("f1", 1, 0.001, 1, 0.5),
                experiment("f2", 2, 0.001, 1, 0.9),
                experiment("other-lr", 0, 0.002, 2, 0.1),
                experiment("no-cv", None, 0.001, 2, 0.3),  # a plain split: not a fold
            ],
        },
    ]
    runs = fold_runs(shown)
    assert sorted(r["name"] for r in runs) == ["f0", "f1", "f2", "other-lr"]
    rows = {r["experiments"]: r for r in summarize(runs)}
    cv = rows["f0,f1,f2"]
    assert cv["folds"] == [0, 1, 2] and cv["of"] == 3 and cv["patients"] == 4
    assert np.isclose(cv["dice_3d_mean"], (2 * 0.8 + 0.5 + 0.9) / 4)
    assert rows["other-lr"]["folds"] == [0] and np.isclose(rows["other-lr"]["dice_3d_mean"], 0.1)
