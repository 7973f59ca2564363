"""Patient-level split: no patient in two sets, deterministic, counts from params."""

import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.settings import Split
from sarcoma_seg.split import kfold_patients, make_split, split_patients

PATIENTS = [f"STS_{i:03d}" for i in range(1, 11)]


def kfold_section(folds: int, fold: int, val: int) -> Split:
    """The split section of a k-fold run (split.test does not apply)."""
    return Split(train=None, val=val, test=1, folds=folds, fold=fold)


def test_no_patient_in_two_sets_and_all_assigned() -> None:
    result = split_patients(PATIENTS, {"train": 6, "val": 2, "test": 2}, seed=1)
    sets = [set(result[k]) for k in ("train", "val", "test")]
    assert [len(s) for s in sets] == [6, 2, 2]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(PATIENTS)
    assert result["unused"] == []


def test_same_seed_same_split_in_any_input_order() -> None:
    counts = {"train": 6, "val": 2, "test": 2}
    first = split_patients(PATIENTS, counts, seed=7)
    assert split_patients(list(reversed(PATIENTS)), counts, seed=7) == first
    others = [split_patients(PATIENTS, counts, seed=s)["test"] for s in range(8, 14)]
    assert any(o != first["test"] for o in others)


def test_train_null_takes_the_rest_and_leftovers_are_reported() -> None:
    assert len(split_patients(PATIENTS, {"train": None, "val": 1, "test": 2}, 0)["train"]) == 7
    assert len(split_patients(PATIENTS, {"train": 3, "val": 1, "test": 2}, 0)["unused"]) == 4


def test_val_zero_gives_every_non_test_patient_to_training() -> None:
    plain = split_patients(PATIENTS, {"train": None, "val": 0, "test": 2}, 0)
    assert plain["val"] == [] and len(plain["train"]) == 8
    for fold in range(5):
        kfold = make_split(PATIENTS, kfold_section(5, fold, 0), 3)
        with_val = make_split(PATIENTS, kfold_section(5, fold, 2), 3)
        assert kfold["val"] == [] and kfold["test"] == with_val["test"]  # same held-out patients
        assert sorted(kfold["train"]) == sorted(with_val["train"] + with_val["val"])


@pytest.mark.parametrize(
    ("counts", "param"),
    [
        ({"train": 8, "val": 2, "test": 2}, "split.train"),
        ({"train": 6, "val": -1, "test": 2}, "split.val"),
        ({"train": 6, "val": 2, "test": "two"}, "split.test"),
    ],
)
def test_bad_counts_name_the_param(counts: dict, param: str) -> None:
    with pytest.raises(SarcomaSegError, match=param.replace(".", r"\.")):
        split_patients(PATIENTS, counts, seed=0)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(SarcomaSegError, match="duplicate"):
        split_patients(PATIENTS + PATIENTS[:1], {"train": 6, "val": 2, "test": 2}, 0)


def test_kfold_tests_every_patient_exactly_once_without_leakage() -> None:
    tested = []
    for fold in range(3):
        result = make_split(PATIENTS, kfold_section(3, fold, 2), seed=5)
        sets = [set(result[k]) for k in ("train", "val", "test")]
        assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
        assert set().union(*sets) == set(PATIENTS) and len(result["val"]) == 2
        tested += result["test"]
    assert sorted(tested) == PATIENTS
    assert make_split(PATIENTS, kfold_section(3, 1, 2), 5) == kfold_patients(PATIENTS, 3, 1, 2, 5)


@pytest.mark.parametrize(
    ("folds", "fold", "param"),
    [(1, 0, "split.folds"), (11, 0, "split.folds"), (5, 5, "split.fold"), (5, -1, "split.fold")],
)
def test_bad_folds_name_the_param(folds: int, fold: int, param: str) -> None:
    with pytest.raises(SarcomaSegError, match=param.replace(".", r"\.")):
        kfold_patients(PATIENTS, folds, fold, 2, seed=0)


def test_without_folds_make_split_deals_the_counts() -> None:
    section = Split(train=6, val=2, test=2, folds=None, fold=0)
    counts = {"train": 6, "val": 2, "test": 2}
    assert make_split(PATIENTS, section, 4) == split_patients(PATIENTS, counts, 4)
