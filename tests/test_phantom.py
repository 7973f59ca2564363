"""The synthetic phantom: Kaggle file schema, CT-like intensities, tumours, determinism."""

import csv
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.phantom import STUDY_LIST_NAME, make_patient, write_phantom_set
from sarcoma_seg.volumes import KAGGLE_GROUPS, KAGGLE_H5

SHAPE = (12, 48, 48)  # tiny but still several slices per tumour
N_PATIENTS = 3
SEED = 7


def read_set(out_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """{group: {patient: array}} from a written phantom h5."""
    with h5py.File(out_dir / KAGGLE_H5, "r") as h5:
        return {g: {pid: h5[g][pid][()] for pid in h5[g]} for g in h5}


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small phantom set shared by the read-only tests."""
    out_dir = tmp_path_factory.mktemp("phantom")
    write_phantom_set(out_dir, N_PATIENTS, SHAPE, SEED)
    return out_dir


@pytest.fixture(scope="module")
def volumes(phantom_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """The arrays of the shared phantom set."""
    return read_set(phantom_dir)


def test_writes_exactly_the_kaggle_files(phantom_dir: Path) -> None:
    assert sorted(p.name for p in phantom_dir.iterdir()) == sorted([KAGGLE_H5, STUDY_LIST_NAME])


def test_schema_groups_ids_shapes_dtypes(volumes) -> None:
    assert set(volumes) == set(KAGGLE_GROUPS)
    ids = ["SYN_001", "SYN_002", "SYN_003"]
    for group in KAGGLE_GROUPS:
        assert sorted(volumes[group]) == ids
    for pid in ids:
        ct, pet, label = (volumes[g][pid] for g in ("ct_data", "pet_data", "label_data"))
        assert ct.shape == pet.shape == label.shape == SHAPE
        assert ct.dtype == np.int16
        assert pet.dtype == np.float32
        assert label.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 1}


def test_h5_datasets_are_gzip_compressed(phantom_dir: Path) -> None:
    with h5py.File(phantom_dir / KAGGLE_H5, "r") as h5:
        assert all(h5[g][pid].compression == "gzip" for g in KAGGLE_GROUPS for pid in h5[g])


def band_fraction(ct: np.ndarray, lo: float, hi: float) -> float:
    """Fraction of voxels with lo <= HU < hi."""
    return float(((ct >= lo) & (ct < hi)).mean())


def test_ct_has_air_fat_muscle_bone(volumes) -> None:
    for pid, ct in volumes["ct_data"].items():
        corners = ct[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert np.all(np.abs(corners.astype(float) + 1000) < 80), pid  # air in every slice
        assert band_fraction(ct, -1100, -900) > 0.2, pid  # air around the body
        assert band_fraction(ct, -200, -50) > 0.02, pid  # subcutaneous fat
        assert band_fraction(ct, 0, 100) > 0.1, pid  # muscle
        assert band_fraction(ct, 700, 3100) > 0.001, pid  # bone
        assert ct.max() >= 950, pid  # the cortical ring


def test_table_strip_below_body_in_every_slice(volumes) -> None:
    for pid, ct in volumes["ct_data"].items():
        middle = slice(SHAPE[2] // 5, -SHAPE[2] // 5)
        for z, slab in enumerate(ct):
            # the lowest row that is ~0-300 HU across the middle of the field is the table ...
            flat = ((slab > -50) & (slab < 300))[:, middle].mean(axis=1)
            table = int(np.flatnonzero(flat > 0.7).max())
            assert table > SHAPE[1] // 2, (pid, z)
            # ... and air separates it from the body above
            above = np.median(slab[table - 6 : table, middle], axis=1)
            assert above.min() < -900, (pid, z)


def test_labels_lie_in_soft_tissue(volumes) -> None:
    for pid, label in volumes["label_data"].items():
        ct = volumes["ct_data"][pid]
        inside = ct[label > 0]
        assert inside.size > 0, pid
        assert inside.min() > -500, pid  # never in air or fat
        assert inside.max() < 700, pid  # never in bone


def test_one_or_two_tumours_spanning_several_slices(volumes) -> None:
    for pid, label in volumes["label_data"].items():
        components, count = ndimage.label(label)
        assert 1 <= count <= 2, pid
        for index in range(1, count + 1):
            slices = np.flatnonzero((components == index).any(axis=(1, 2)))
            assert slices.size >= 3, pid
            assert np.all(np.diff(slices) == 1), pid  # consecutive slices


def test_tumour_is_subtly_brighter_than_muscle(volumes) -> None:
    for pid, label in volumes["label_data"].items():
        ct = volumes["ct_data"][pid].astype(float)
        tumour = label > 0
        ring = ndimage.binary_dilation(tumour, np.ones((1, 3, 3), bool), iterations=3) & ~tumour
        muscle = ct[ring & (ct > -20) & (ct < 150)]
        contrast = ct[tumour].mean() - muscle.mean()
        assert 25 < contrast < 90, (pid, contrast)


def test_pet_hot_in_tumour_and_zero_in_air(volumes) -> None:
    for pid, pet in volumes["pet_data"].items():
        ct, label = volumes["ct_data"][pid], volumes["label_data"][pid]
        body = (ct > -500) & (label == 0)
        assert pet[label > 0].mean() > 2 * pet[body].mean(), pid
        assert 0.3 < float(np.median(pet[body])) < 1.2, pid
        assert np.all(pet[:, [0, -1], [0, -1]] == 0), pid
        assert pet.min() >= 0, pid


def test_study_list_matches_h5_ids(phantom_dir: Path, volumes) -> None:
    with (phantom_dir / STUDY_LIST_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["Patient ID"] for row in rows] == sorted(volumes["ct_data"])
    assert {"Age", "Sex", "Grade", "Treatment"} <= set(rows[0])


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, phantom_dir: Path) -> None:
    again = write_phantom_set(tmp_path / "again", N_PATIENTS, SHAPE, SEED)
    for path in again:
        original = phantom_dir / path.name
        assert hashlib.sha256(path.read_bytes()).digest() == (
            hashlib.sha256(original.read_bytes()).digest()
        )
    write_phantom_set(tmp_path / "other", N_PATIENTS, SHAPE, SEED + 1)
    first, other = read_set(phantom_dir), read_set(tmp_path / "other")
    assert not np.array_equal(first["ct_data"]["SYN_001"], other["ct_data"]["SYN_001"])


def test_make_patient_shapes_and_determinism() -> None:
    a = make_patient(np.random.default_rng([1, 1]), (10, 40, 56))
    b = make_patient(np.random.default_rng([1, 1]), (10, 40, 56))
    for left, right in zip(a, b, strict=True):
        assert left.shape == (10, 40, 56)
        np.testing.assert_array_equal(left, right)


@pytest.mark.parametrize("n_patients", [0, -2, True, "3", 2.0, None])
def test_bad_n_patients_names_param_and_writes_nothing(tmp_path: Path, n_patients) -> None:
    out_dir = tmp_path / "raw"
    with pytest.raises(SarcomaSegError, match=r"data\.synthetic\.n_patients"):
        write_phantom_set(out_dir, n_patients, SHAPE, SEED)
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "shape",
    [(12, 48), (7, 48, 48), (12, 31, 48), (12, 48, 16), (12.0, 48, 48), "12x48x48", None],
)
def test_bad_shape_names_param_and_writes_nothing(tmp_path: Path, shape) -> None:
    out_dir = tmp_path / "raw"
    with pytest.raises(SarcomaSegError, match=r"data\.synthetic\.shape"):
        write_phantom_set(out_dir, 2, shape, SEED)
    assert not out_dir.exists()


def test_minimum_shape_still_has_a_tumour(tmp_path: Path) -> None:
    write_phantom_set(tmp_path, 2, (8, 32, 32), SEED)
    labels = read_set(tmp_path)["label_data"]
    assert all(label.sum() > 0 for label in labels.values())
