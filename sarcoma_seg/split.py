"""Patient-level train / val / test split: patients, never slices, are assigned to a set."""

import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.params import check_positive_int

SETS = ("train", "val", "test")


def split_patients(
    patient_ids: list[str], counts: dict[str, int | None], seed: int
) -> dict[str, list[str]]:
    """Shuffle patients with seed and deal them out; train takes the rest when its count is null."""
    ids = sorted(set(patient_ids))
    if len(ids) != len(patient_ids):
        raise SarcomaSegError("split: duplicate patient ids in the input")
    val = check_positive_int("split.val", counts.get("val"))
    test = check_positive_int("split.test", counts.get("test"))
    train = counts.get("train")
    train = len(ids) - val - test if train is None else check_positive_int("split.train", train)
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
