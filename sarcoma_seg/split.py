"""Patient-level train / val / test split: patients, never slices, are assigned to a set."""

from collections.abc import Mapping

import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.params import check_int_at_least
from sarcoma_seg.settings import Split

SETS = ("train", "val", "test")


def split_patients(
    patient_ids: list[str], counts: Mapping[str, int | None], seed: int
) -> dict[str, list[str]]:
    """Shuffle patients with seed and deal them out; train takes the rest when its count is null."""
    ids = sorted(set(patient_ids))
    if len(ids) != len(patient_ids):
        raise SarcomaSegError("split: duplicate patient ids in the input")
    val = check_int_at_least("split.val", counts["val"], 0)  # 0: no validation (monitor last)
    test = check_int_at_least("split.test", counts["test"], 1)
    train = counts["train"]
    train = len(ids) - val - test if train is None else check_int_at_least("split.train", train, 1)
    if train < 1 or train + val + test > len(ids):
        raise SarcomaSegError(
            f"split: train={train} + val={val} + test={test} needs more patients than the "
            f"{len(ids)} available; lower split.train/split.val/split.test"
        )
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    sizes = {"train": train, "val": val, "test": test}
    result: dict[str, list[str]] = {}
    start = 0
    for name in SETS:
        result[name] = sorted(order[start : start + sizes[name]])
        start += sizes[name]
    result["unused"] = sorted(order[start:])
    return result


def kfold_patients(
    patient_ids: list[str], folds: object, fold: object, val: object, seed: int
) -> dict[str, list[str]]:
    """Fold `fold` of a seeded patient-level k-fold: its patients are the test set, `val` of the
    others validate, the rest train. Every patient is tested in exactly one fold."""
    ids = sorted(set(patient_ids))
    k = check_int_at_least("split.folds", folds, 2)
    if k > len(ids):
        raise SarcomaSegError(f"split.folds={k} is more than the {len(ids)} patients available")
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < k:
        raise SarcomaSegError(f"split.fold={fold!r} is not allowed; choose 0 to {k - 1}")
    val = check_int_at_least("split.val", val, 0)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    chunks = np.array_split(np.array(order), k)
    rest = [p for i, chunk in enumerate(chunks) if i != fold for p in chunk.tolist()]
    if val >= len(rest):
        raise SarcomaSegError(f"split.val={val} leaves no training patients in fold {fold}")
    return {
        "train": sorted(rest[val:]),
        "val": sorted(rest[:val]),
        "test": sorted(chunks[fold].tolist()),
        "unused": [],
    }


def make_split(patient_ids: list[str], split: Split, seed: int) -> dict[str, list[str]]:
    """k-fold when split.folds is set, else the plain train / val / test counts."""
    if split.folds is None:
        counts = {"train": split.train, "val": split.val, "test": split.test}
        return split_patients(patient_ids, counts, seed)
    return kfold_patients(patient_ids, split.folds, split.fold, split.val, seed)
