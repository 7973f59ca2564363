"""Reading Kaggle-schema HDF5 files into Volumes, and refusing broken ones with a named error."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.hdf5 import read_kaggle_h5
from sarcoma_seg.io.store import load_volumes, raw_patient_ids, write_store
from sarcoma_seg.volumes import (
    KAGGLE_H5,
    Volume,
    resample,
)


def write_h5(folder: Path, patients: dict[str, dict[str, np.ndarray]]) -> Path:
    """A Kaggle-schema file: group -> one dataset per patient."""
    path = folder / KAGGLE_H5
    with h5py.File(path, "w") as h5:
        for pid, arrays in patients.items():
            for group, array in arrays.items():
                h5.require_group(group).create_dataset(pid, data=array)
    return path


def patient(shape=(4, 8, 8), label_value=1) -> dict[str, np.ndarray]:
    """One valid patient with a small tumour and a PET with a trailing singleton axis."""
    label = np.zeros(shape, dtype=np.uint8)
    label[1:3, 2:4, 2:4] = label_value
    ct = np.full(shape, 40.0, dtype=np.float32)
    return {"ct_data": ct, "label_data": label, "pet_data": np.ones((*shape, 1), np.float32)}


def test_reads_patients_with_spacing_binary_mask_and_squeezed_pet(tmp_path: Path) -> None:
    path = write_h5(tmp_path, {"STS_002": patient(label_value=2), "STS_003": patient()})
    vol, other = read_kaggle_h5(path)
    assert (vol.patient_id, other.patient_id) == ("STS_002", "STS_003")
    assert vol.spacing == (5.0, 5.0, 5.0)
    assert set(np.unique(vol.mask)) == {0, 1} and vol.mask.sum() == 8
    assert vol.pet.shape == vol.ct.shape


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({**patient(), "ct_data": np.full((4, 8, 8), np.nan, np.float32)}, "NaN"),
        ({**patient(), "label_data": np.zeros((4, 8, 9), np.uint8)}, "shape"),
        ({**patient(), "label_data": np.full((4, 8, 8), 0.5, np.float32)}, "not integer labels"),
    ],
)
def test_bad_patient_is_named(tmp_path: Path, arrays: dict, expected: str) -> None:
    path = write_h5(tmp_path, {"STS_009": arrays})
    with pytest.raises(SarcomaSegError, match=f"STS_009.*{expected}"):
        read_kaggle_h5(path)


def test_patient_without_label_is_named(tmp_path: Path) -> None:
    arrays = patient()
    del arrays["label_data"]
    path = write_h5(tmp_path, {"STS_002": patient(), "STS_005": arrays})
    with pytest.raises(SarcomaSegError, match="STS_005 lack a CT or a label"):
        read_kaggle_h5(path)


def test_missing_group_and_unreadable_file_are_named(tmp_path: Path) -> None:
    with h5py.File(tmp_path / KAGGLE_H5, "w") as h5:
        h5.create_group("ct_data")
    with pytest.raises(SarcomaSegError, match="missing group.*label_data"):
        read_kaggle_h5(tmp_path / KAGGLE_H5)
    (tmp_path / KAGGLE_H5).write_bytes(b"not hdf5")
    with pytest.raises(SarcomaSegError, match=f"{KAGGLE_H5}: not a readable HDF5"):
        read_kaggle_h5(tmp_path / KAGGLE_H5)


def test_external_dataset_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(np.zeros(4 * 8 * 8, np.float32).tobytes())
    write_h5(tmp_path, {"STS_002": patient()})
    with h5py.File(tmp_path / KAGGLE_H5, "a") as h5:
        del h5["ct_data/STS_002"]
        h5["ct_data"].create_dataset(
            "STS_002",
            shape=(4, 8, 8),
            dtype=np.float32,
            external=[(str(tmp_path / "outside.bin"), 0, 4 * 8 * 8 * 4)],
        )
    with pytest.raises(SarcomaSegError, match="stored outside the file"):
        read_kaggle_h5(tmp_path / KAGGLE_H5)


def volume(pid: str, shape=(4, 6, 8), spacing=(5.0, 1.0, 1.0)) -> Volume:
    """A small Volume with a tumour block."""
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 2:4, 2:6] = 1
    ct = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return Volume(pid, ct, mask, None, spacing, f"test:{pid}", "HU")


def test_store_roundtrip_keeps_arrays_spacing_provenance(tmp_path: Path) -> None:
    write_store(tmp_path / "volumes.h5", [volume("B"), volume("A", spacing=(3.0, 0.5, 0.5))])
    assert raw_patient_ids(tmp_path) == ["A", "B"]
    b, a = load_volumes(tmp_path, ["B", "A"])
    assert a.spacing == (3.0, 0.5, 0.5) and b.provenance == "test:B" and a.units == "HU"
    assert np.array_equal(b.ct, volume("B").ct) and np.array_equal(b.mask, volume("B").mask)
    with pytest.raises(SarcomaSegError, match="STS_777 not in the store"):
        load_volumes(tmp_path, ["STS_777"])


def test_store_refuses_duplicate_patient_ids(tmp_path: Path) -> None:
    with pytest.raises(SarcomaSegError, match="duplicate patient id.*A"):
        write_store(tmp_path / "volumes.h5", [volume("A"), volume("A")])


def test_resample_to_target_spacing_keeps_mask_binary_and_volume() -> None:
    v = volume("A", shape=(4, 8, 8), spacing=(5.0, 1.0, 1.0))
    out = resample(v, (2.5, 2.0, 2.0))
    assert out.ct.shape == out.mask.shape == (8, 4, 4)
    assert out.spacing == (2.5, 2.0, 2.0)
    assert set(np.unique(out.mask)) <= {0, 1}
    true_mm3 = v.mask.sum() * np.prod(v.spacing)
    assert np.isclose(out.mask.sum() * np.prod(out.spacing), true_mm3, rtol=0.25)
