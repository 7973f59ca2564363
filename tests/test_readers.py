"""Reading NIfTI and PNG folders into Volumes, and refusing broken ones with a named error."""

import json
import re
import struct
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.nifti import nifti_inputs, read_nifti
from sarcoma_seg.io.png import read_slices, slice_files, slice_inputs

SHAPE = (20, 18, 6)  # (x, y, z) as stored, RAS
SPACING = (2.0, 1.5, 4.0)  # mm along x, y, z
MARKER = (1, 2, 3)  # an asymmetric voxel: no flip or transpose maps it onto itself


def ras_affine(spacing=SPACING, origin=(-10.0, 5.0, 30.0)) -> np.ndarray:
    """A RAS+ affine with the given voxel size and origin."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def as_lps(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same world volume stored with x and y reversed (as DICOM-derived files often are)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]  # new index -> old index
    return data[::-1, ::-1, :], affine @ flip


def as_zyx(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same world volume stored with its axes in (z, y, x) order."""
    swap = np.eye(4)[[2, 1, 0, 3]]  # new index (k, j, i) -> old index (i, j, k)
    return data.transpose(2, 1, 0), affine @ swap


def reference_ct() -> np.ndarray:
    """A CT in RAS storage whose every voxel differs, with a marker at MARKER."""
    ct = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) - 1000.0
    ct[MARKER] = 3000.0
    return ct


def reference_mask(label: int = 1) -> np.ndarray:
    """A mask with the marker voxel and a small block labelled."""
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[MARKER] = label
    mask[10:12, 8:10, 1:3] = label
    return mask


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def ibsi_patient(root: Path, pid: str, ct=None, mask=None, affine=None, mask_affine=None) -> Path:
    """<root>/<pid>/CT_image.nii.gz + CT_mask.nii.gz; returns the patient folder."""
    affine = ras_affine() if affine is None else affine
    save(root / pid / "CT_image.nii.gz", reference_ct() if ct is None else ct, affine)
    mask = reference_mask() if mask is None else mask
    save(root / pid / "CT_mask.nii.gz", mask, affine if mask_affine is None else mask_affine)
    return root / pid


def nnunet_case(root: Path, case: str, channels: int = 1) -> None:
    """imagesTr/<case>_000c.nii.gz for each channel + labelsTr/<case>.nii.gz."""
    for channel in range(channels):
        save(root / "imagesTr" / f"{case}_{channel:04d}.nii.gz", reference_ct(), ras_affine())
    save(root / "labelsTr" / f"{case}.nii.gz", reference_mask(), ras_affine())


def expected_internal(ras: np.ndarray) -> np.ndarray:
    """A RAS-stored array as the readers return it: (slices, rows, cols) = (z, y, x)."""
    return ras.transpose(2, 1, 0)


def raises(where: Path | str, what: str):
    """pytest.raises for a SarcomaSegError naming this file (a path or its tail) and then what."""
    return pytest.raises(SarcomaSegError, match=re.escape(str(where)) + ".*" + what)


# --- NIfTI: orientation, spacing, values -----------------------------------------------------


@pytest.mark.parametrize("store", [None, as_lps, as_zyx], ids=["ras", "lps", "zyx"])
def test_nifti_any_storage_comes_back_in_one_orientation(tmp_path: Path, store) -> None:
    ct, mask, affine = reference_ct(), reference_mask(label=2), ras_affine()
    if store is not None:
        (ct, affine), (mask, _) = store(ct, affine), store(mask, affine)
    ibsi_patient(tmp_path, "STS_001", ct, mask, affine)
    (vol,) = read_nifti(tmp_path)
    assert vol.patient_id == "STS_001" and vol.units == "HU" and vol.pet is None
    assert vol.ct.dtype == np.float32 and vol.ct.shape == (6, 18, 20)
    np.testing.assert_array_equal(vol.ct, expected_internal(reference_ct()))
    assert vol.ct[3, 2, 1] == 3000.0  # the marker: (x, y, z) = (1, 2, 3) -> (slice, row, col)
    assert vol.spacing == pytest.approx((4.0, 1.5, 2.0))
    assert vol.mask.dtype == np.uint8 and set(np.unique(vol.mask)) == {0, 1}
    np.testing.assert_array_equal(vol.mask, expected_internal(reference_mask()))
    assert vol.provenance == f"{tmp_path.name}/STS_001/CT_image.nii.gz"


def test_nifti_scale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    path = save(tmp_path / "STS_001" / "CT_image.nii", raw, ras_affine())
    with path.open("r+b") as handle:  # scl_slope and scl_inter live at bytes 112..119
        handle.seek(112)
        handle.write(struct.pack("<ff", 2.0, -1024.0))
    save(tmp_path / "STS_001" / "CT_mask.nii.gz", reference_mask(), ras_affine())
    (vol,) = read_nifti(tmp_path)
    np.testing.assert_array_equal(vol.ct, expected_internal(raw * 2.0 - 1024.0))


def test_patient_without_tumour_is_allowed(tmp_path: Path) -> None:
    ibsi_patient(tmp_path, "STS_001", mask=np.zeros(SHAPE, np.uint8))
    (vol,) = read_nifti(tmp_path)
    assert vol.mask.sum() == 0


def test_pet_is_resampled_onto_the_ct_grid(tmp_path: Path) -> None:
    ct_affine = ras_affine((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))  # CT voxel (i, j, k) at (i, j, 2k)
    ct, affine = as_lps(reference_ct(), ct_affine)  # CT and PET stored differently
    mask, _ = as_lps(reference_mask(), ct_affine)
    folder = ibsi_patient(tmp_path, "STS_001", ct, mask, affine)
    # PET voxel (p, q, r) centred at (1.5 + 4p, 1.5 + 4q, 2r - 0.02): 4 mm in-plane, and its
    # slices 0.02 mm off the CT's, as in the IBSI files
    pet = np.ones((4, 4, 6), np.float32)
    pet[1:4, 1:3, 2:5] = 10.0  # hot block: x 5.5..13.5 (+2 to its outer edge), y 5.5..9.5
    save(folder / "PET_image.nii.gz", pet, ras_affine((4.0, 4.0, 2.0), (1.5, 1.5, -0.02)))
    (vol,) = read_nifti(tmp_path)
    assert vol.pet.shape == vol.ct.shape and vol.pet.dtype == np.float32
    hot = np.zeros((20, 18, 6), bool)  # in RAS (i, j, k)
    hot[6:16, 6:10, 2:4] = True  # x 6..15 (the block reaches the PET's last column), y 6..9
    np.testing.assert_array_equal(np.isclose(vol.pet, 10.0), expected_internal(hot))
    outside = np.zeros((20, 18, 6), bool)
    outside[16:, :, :] = outside[:, 16:, :] = True  # beyond x, y = 15.5 mm: no PET there
    np.testing.assert_array_equal(vol.pet == 0.0, expected_internal(outside))
    assert vol.pet[0].min() == 0.0 and vol.pet[0].max() == 1.0  # edge slice kept, not zeroed


def test_oblique_pet_is_resampled_through_world_coordinates(tmp_path: Path) -> None:
    ct_affine = ras_affine((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    folder = ibsi_patient(tmp_path, "STS_001", affine=ct_affine)
    turn = np.radians(30)  # PET turned 30 degrees about z: no canonical reorientation undoes it
    pet_affine = np.eye(4)
    pet_affine[:2, :2] = [[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]
    pet_affine[:3, 3] = np.array([8.0, 9.0, 6.0]) - pet_affine[:3, :3] @ [15.0, 15.0, 3.0]
    pet = np.ones((30, 30, 6), np.float32)  # covers the whole CT grid, as a PET must
    pet[10:20, 10:20] = 2.0  # a warm 10 x 10 mm square around the hot voxel
    pet[15, 15, 3] = 100.0  # at world (8, 9, 6): CT voxel (i, j, k) = (8, 9, 3)
    save(folder / "PET_image.nii.gz", pet, pet_affine)
    (vol,) = read_nifti(tmp_path)
    assert np.unravel_index(vol.pet.argmax(), vol.pet.shape) == (3, 9, 8)
    assert vol.pet[3, 9, 8] == pytest.approx(100.0)
    assert (vol.pet[2] > 1.5).sum() == pytest.approx(100, abs=8)  # the turned 10 x 10 mm square


def test_nnunet_layout_with_and_without_pet_channel(tmp_path: Path) -> None:
    nnunet_case(tmp_path, "STS_007", channels=2)
    nnunet_case(tmp_path, "STS_008")
    (tmp_path / "imagesTr" / "notes.txt").write_text("not an image")
    first, second = read_nifti(tmp_path)
    assert (first.patient_id, second.patient_id) == ("STS_007", "STS_008")
    assert first.pet is None  # without dataset.json a second channel is not assumed to be PET
    np.testing.assert_array_equal(first.ct, expected_internal(reference_ct()))
    assert first.spacing == pytest.approx((4.0, 1.5, 2.0))
    assert first.provenance == f"{tmp_path.name}/imagesTr/STS_007_0000.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}}))
    first, second = read_nifti(tmp_path)
    np.testing.assert_array_equal(first.pet, first.ct)  # channel 1 is a copy of the CT here
    assert second.pet is None
    names = [p.relative_to(tmp_path).as_posix() for p in nifti_inputs(tmp_path)]
    assert names == [
        "dataset.json",
        "imagesTr/STS_007_0000.nii.gz",
        "imagesTr/STS_007_0001.nii.gz",
        "imagesTr/STS_008_0000.nii.gz",
        "labelsTr/STS_007.nii.gz",
        "labelsTr/STS_008.nii.gz",
    ]


def test_msd_image_without_channel_suffix_and_uncompressed(tmp_path: Path) -> None:
    save(tmp_path / "imagesTr" / "sarc_3.nii", reference_ct(), ras_affine())
    save(tmp_path / "labelsTr" / "sarc_3.nii", reference_mask(), ras_affine())
    (vol,) = read_nifti(tmp_path)
    assert vol.patient_id == "sarc_3" and vol.mask.sum() == reference_mask().sum()


def test_nifti_inputs_of_the_per_patient_layout(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_002")
    save(folder / "PET_image.nii.gz", np.ones((4, 4, 6), np.float32), ras_affine())
    save(folder / "PET_mask.nii.gz", np.ones((4, 4, 6), np.uint8), ras_affine())  # not read
    ibsi_patient(tmp_path, "STS_001")
    names = [p.relative_to(tmp_path).as_posix() for p in nifti_inputs(tmp_path)]
    assert names == [
        "STS_001/CT_image.nii.gz",
        "STS_001/CT_mask.nii.gz",
        "STS_002/CT_image.nii.gz",
        "STS_002/CT_mask.nii.gz",
        "STS_002/PET_image.nii.gz",
    ]


# --- NIfTI: bad input is refused, naming file and patient -----------------------------------


def test_missing_empty_or_unrecognised_nifti_folder(tmp_path: Path) -> None:
    with raises(tmp_path / "absent", "not found"):
        read_nifti(tmp_path / "absent")
    with raises(tmp_path, "empty"):
        read_nifti(tmp_path)
    (tmp_path / "readme.txt").write_text("nothing here")
    (tmp_path / "STS_001").mkdir()
    with raises(tmp_path, "no recognised NIfTI layout"):
        nifti_inputs(tmp_path)


@pytest.mark.parametrize(
    ("name", "cut"),
    [("CT_mask.nii.gz", 0.5), ("CT_mask.nii.gz", 0.0), ("CT_mask.nii", 0.5)],
    ids=["half", "garbage", "half-uncompressed"],
)
def test_truncated_or_garbage_nifti(tmp_path: Path, name: str, cut: float) -> None:
    ibsi_patient(tmp_path, "STS_001")
    folder = ibsi_patient(tmp_path, "STS_002")
    (folder / "CT_mask.nii.gz").unlink()
    path = save(folder / name, reference_mask(), ras_affine())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)] if cut else b"garbage" * 50)
    with raises(f"{path} (patient STS_002)", "unreadable or truncated NIfTI") as error:
        read_nifti(tmp_path)
    assert "\n" not in str(error.value)  # nibabel's own text spans lines; ours must not


def test_ct_and_mask_of_different_shapes(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_003", mask=np.zeros((20, 18, 5), np.uint8))
    with raises(f"{folder / 'CT_mask.nii.gz'} (patient STS_003)", r"CT shape \(6, 18, 20\)"):
        read_nifti(tmp_path)


@pytest.mark.parametrize(
    "mask_affine",
    [ras_affine((2.0, 1.5, 3.0)), ras_affine(origin=(-10.0, 5.0, 32.0))],
    ids=["spacing", "origin"],
)
def test_ct_and_mask_on_different_grids(tmp_path: Path, mask_affine: np.ndarray) -> None:
    folder = ibsi_patient(tmp_path, "STS_003", mask_affine=mask_affine)
    with raises(f"{folder / 'CT_mask.nii.gz'} (patient STS_003)", "grids differ.*spacing"):
        read_nifti(tmp_path)


def test_ct_and_mask_within_float_tolerance_are_accepted(tmp_path: Path) -> None:
    ibsi_patient(tmp_path, "STS_003", mask_affine=ras_affine(origin=(-10.0, 5.0, 30.001)))
    assert len(read_nifti(tmp_path)) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_ct_with_nan_or_infinite_voxels(tmp_path: Path, bad: float) -> None:
    ct = reference_ct()
    ct[5, 5, 5] = bad
    ibsi_patient(tmp_path, "STS_004", ct=ct)
    with raises("STS_004/CT_image.nii.gz (patient STS_004)", "CT holds NaN or infinite"):
        read_nifti(tmp_path)


def test_pet_with_nan_voxels(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_004")
    pet = np.ones((4, 4, 6), np.float32)
    pet[0, 0, 0] = np.nan
    save(folder / "PET_image.nii.gz", pet, ras_affine())
    with raises(f"{folder / 'PET_image.nii.gz'} (patient STS_004)", "PET holds NaN"):
        read_nifti(tmp_path)


def test_pet_that_misses_the_ct(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_004")
    save(folder / "PET_image.nii.gz", np.ones((4, 4, 6), np.float32), ras_affine(origin=(900,) * 3))
    with raises(f"{folder / 'PET_image.nii.gz'} (patient STS_004)", "does not overlap"):
        read_nifti(tmp_path)


@pytest.mark.parametrize(
    ("mask", "what"),
    [
        (np.full(SHAPE, 0.5, np.float32), "not integer labels"),
        (np.full(SHAPE, np.nan, np.float32), "NaN"),
        (np.full(SHAPE, -1, np.int16), "negative"),
    ],
    ids=["fraction", "nan", "negative"],
)
def test_mask_values_that_are_not_labels(tmp_path: Path, mask: np.ndarray, what: str) -> None:
    folder = ibsi_patient(tmp_path, "STS_005", mask=mask)
    with raises(f"{folder / 'CT_mask.nii.gz'} (patient STS_005)", what):
        read_nifti(tmp_path)


def test_image_that_is_not_3d_or_not_real(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_005")
    save(folder / "CT_image.nii.gz", np.zeros((*SHAPE, 2), np.float32), ras_affine())
    with raises(f"{folder / 'CT_image.nii.gz'} (patient STS_005)", "not 3D"):
        read_nifti(tmp_path)
    save(folder / "CT_image.nii.gz", np.zeros(SHAPE, np.complex64), ras_affine())
    with raises(f"{folder / 'CT_image.nii.gz'} (patient STS_005)", "complex64, not real"):
        read_nifti(tmp_path)


def test_image_without_mask_and_mask_without_image(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_006")
    (folder / "CT_mask.nii.gz").unlink()
    with raises(f"{folder / 'CT_image.nii.gz'} (patient STS_006)", "no CT_mask"):
        read_nifti(tmp_path)
    ibsi_patient(tmp_path, "STS_006")
    (folder / "CT_image.nii.gz").unlink()
    with raises(f"{folder / 'CT_mask.nii.gz'} (patient STS_006)", "no CT_image"):
        read_nifti(tmp_path)


def test_same_file_compressed_and_not(tmp_path: Path) -> None:
    folder = ibsi_patient(tmp_path, "STS_006")
    save(folder / "CT_image.nii", reference_ct(), ras_affine())
    with raises(f"{folder / 'CT_image.nii.gz'} (patient STS_006)", "duplicated by CT_image.nii"):
        read_nifti(tmp_path)


def test_nnunet_unpaired_cases_and_folders(tmp_path: Path) -> None:
    nnunet_case(tmp_path, "A")
    save(tmp_path / "imagesTr" / "B_0000.nii.gz", reference_ct(), ras_affine())
    with raises(f"{tmp_path / 'imagesTr' / 'B_0000.nii.gz'} (patient B)", "no label B.nii.gz"):
        read_nifti(tmp_path)
    (tmp_path / "imagesTr" / "B_0000.nii.gz").rename(tmp_path / "imagesTr" / "B_0001.nii.gz")
    save(tmp_path / "labelsTr" / "B.nii.gz", reference_mask(), ras_affine())
    with raises(f"{tmp_path / 'imagesTr' / 'B_0001.nii.gz'} (patient B)", "no channel 0"):
        read_nifti(tmp_path)
    (tmp_path / "imagesTr" / "B_0001.nii.gz").unlink()
    with raises(f"{tmp_path / 'labelsTr' / 'B.nii.gz'} (patient B)", "no image"):
        read_nifti(tmp_path)
    for path in (tmp_path / "labelsTr").iterdir():
        path.unlink()
    (tmp_path / "labelsTr").rmdir()
    with raises(tmp_path / "imagesTr", "no labelsTr folder"):
        read_nifti(tmp_path)


def test_same_patient_in_both_layouts(tmp_path: Path) -> None:
    ibsi_patient(tmp_path, "STS_007")
    nnunet_case(tmp_path, "STS_007")
    with raises("patient STS_007", "patient also in"):
        read_nifti(tmp_path)


def test_one_bad_patient_fails_the_whole_folder(tmp_path: Path) -> None:
    for pid in ("STS_001", "STS_002", "STS_003"):
        ibsi_patient(tmp_path, pid)
    ibsi_patient(tmp_path, "STS_009", mask=np.full(SHAPE, 0.5, np.float32))
    with raises("(patient STS_009)", "not integer labels"):
        read_nifti(tmp_path)


# --- PNG slices -------------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray) -> Path:
    """Write an 8-bit PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def slice_pair(root: Path, suffix: str, pid: str, index: int, size=(12, 10), label=1) -> Path:
    """ct_images<suffix>/<pid>_<index>_.png filled with its index; its mask labels one pixel."""
    name = f"{pid}_{index}_.png"
    image = np.full(size, index, np.uint8)
    image[1, 3] = 200  # asymmetric marker: row 1, col 3
    mask = np.zeros(size, np.uint8)
    mask[1, 3] = label
    write_png(root / f"mask_images{suffix}" / name, mask)
    return write_png(root / f"ct_images{suffix}" / name, image)


def test_slices_pooled_grouped_and_stacked_in_index_order(tmp_path: Path) -> None:
    slice_pair(tmp_path, "_dir", "STS_002", 10, label=2)
    slice_pair(tmp_path, "_dir", "STS_002", 2)
    slice_pair(tmp_path, "_valid_dir", "STS_002", 9)  # 10 before 9 by name: stacking is numeric
    slice_pair(tmp_path, "_test_dir", "STS_003", 0, size=(8, 8))  # patients may differ in size
    (tmp_path / "ct_images_dir" / "Thumbs.db").write_bytes(b"not a png")
    first, second = read_slices(tmp_path)
    assert (first.patient_id, second.patient_id) == ("STS_002", "STS_003")
    assert first.ct.shape == (3, 12, 10) and first.ct.dtype == np.float32
    assert list(first.ct[:, 0, 0]) == [2.0, 9.0, 10.0]  # gaps (3..8) closed up, order kept
    assert (first.ct[:, 1, 3] == 200).all() and first.ct[:, 3, 1].max() < 200
    assert first.units == "png8" and first.spacing == (5.0, 5.0, 5.0) and first.pet is None
    assert first.mask.dtype == np.uint8 and first.mask.sum() == 3 and first.mask[:, 1, 3].all()
    assert (
        first.provenance == f"{tmp_path.name}/{{ct_images_dir,ct_images_valid_dir}}/STS_002_*_.png"
    )
    assert second.ct.shape == (1, 8, 8)
    indices = [(s.patient_id, s.index) for s in slice_files(tmp_path)]
    assert indices == [("STS_002", 2), ("STS_002", 9), ("STS_002", 10), ("STS_003", 0)]
    names = [p.relative_to(tmp_path).as_posix() for p in slice_inputs(tmp_path)]
    assert names[:2] == ["ct_images_dir/STS_002_10_.png", "ct_images_dir/STS_002_2_.png"]
    assert len(names) == 8 and "mask_images_test_dir/STS_003_0_.png" in names


def test_missing_empty_or_unrecognised_slice_folder(tmp_path: Path) -> None:
    with raises(tmp_path / "absent", "not found"):
        read_slices(tmp_path / "absent")
    with raises(tmp_path, "empty"):
        slice_inputs(tmp_path)
    (tmp_path / "images").mkdir()
    with raises(tmp_path, "no recognised PNG layout"):
        read_slices(tmp_path)
    (tmp_path / "ct_images_dir").mkdir()
    (tmp_path / "mask_images_dir").mkdir()
    with raises(tmp_path, "no PNG slices"):
        read_slices(tmp_path)


@pytest.mark.parametrize("cut", [0.5, 0.0], ids=["half", "garbage"])
def test_truncated_or_garbage_png(tmp_path: Path, cut: float) -> None:
    slice_pair(tmp_path, "_dir", "STS_002", 0)
    path = slice_pair(tmp_path, "_dir", "STS_002", 1, size=(64, 64))
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)] if cut else b"garbage")
    with raises(f"{path} (patient STS_002)", "unreadable or truncated PNG"):
        read_slices(tmp_path)


def test_png_that_is_not_grayscale(tmp_path: Path) -> None:
    path = slice_pair(tmp_path, "_dir", "STS_002", 0)
    write_png(path, np.zeros((12, 10, 3), np.uint8))
    with raises(f"{path} (patient STS_002)", "mode RGB, expected grayscale L"):
        read_slices(tmp_path)


def test_unpaired_slices_and_folders(tmp_path: Path) -> None:
    image = slice_pair(tmp_path, "_dir", "STS_002", 0)
    mask = tmp_path / "mask_images_dir" / image.name
    mask.unlink()
    with raises(f"{image} (patient STS_002)", "no mask"):
        read_slices(tmp_path)
    slice_pair(tmp_path, "_dir", "STS_002", 0)
    image.unlink()
    with raises(f"{mask} (patient STS_002)", "no image"):
        read_slices(tmp_path)
    (tmp_path / "ct_images_valid_dir").mkdir()
    with raises(tmp_path / "ct_images_valid_dir", "no mask_images_valid_dir folder"):
        read_slices(tmp_path)


def test_misnamed_png(tmp_path: Path) -> None:
    slice_pair(tmp_path, "_dir", "STS_002", 0)
    path = write_png(tmp_path / "ct_images_dir" / "STS_002-1.png", np.zeros((12, 10), np.uint8))
    with raises(path, "not <PATIENT>_<SLICE>_.png"):
        read_slices(tmp_path)


def test_same_slice_in_two_folders_is_refused(tmp_path: Path) -> None:
    first = slice_pair(tmp_path, "_dir", "STS_002", 7)
    second = slice_pair(tmp_path, "_test_dir", "STS_002", 7)  # identical content: refused too
    with raises(f"{second} (patient STS_002)", f"slice 7 also in {re.escape(str(first))}"):
        read_slices(tmp_path)


def test_mask_of_another_size(tmp_path: Path) -> None:
    image = slice_pair(tmp_path, "_dir", "STS_002", 0)
    mask = write_png(tmp_path / "mask_images_dir" / image.name, np.zeros((12, 11), np.uint8))
    with raises(f"{mask} (patient STS_002)", r"mask size \(12, 11\) differs"):
        read_slices(tmp_path)


def test_slices_of_one_patient_in_different_sizes(tmp_path: Path) -> None:
    slice_pair(tmp_path, "_dir", "STS_002", 0)
    odd = slice_pair(tmp_path, "_valid_dir", "STS_002", 1, size=(12, 12))
    with raises(f"{odd} (patient STS_002)", "differs from STS_002_0_.png size"):
        read_slices(tmp_path)


# --- the real data ----------------------------------------------------------------------------

IBSI_PATIENTS = [
    f"STS_{n:03d}"
    for n in (1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 15, 18, 19, 22, 23, 24, 25, 26, 28, 31)
]
SLICE_PATIENTS = [f"STS_{n:03d}" for n in (2, 3, 5, 12, 21, 23, 31)]


@pytest.mark.realdata
def test_real_ibsi_patients(shared_data: Path) -> None:
    volumes = read_nifti(shared_data / "ibsi-sts")
    assert [v.patient_id for v in volumes] == IBSI_PATIENTS
    assert len(nifti_inputs(shared_data / "ibsi-sts")) == 60  # CT, mask and PET of each
    pet_higher_in_tumour = 0
    for vol in volumes:
        assert vol.ct.ndim == 3 and vol.mask.shape == vol.pet.shape == vol.ct.shape
        assert 40 <= vol.ct.shape[0] <= 90 and all(120 <= n <= 240 for n in vol.ct.shape[1:])
        assert vol.spacing == pytest.approx((3.27, 0.977, 0.977), abs=0.01)
        assert vol.ct.min() <= -900 and vol.ct.max() >= 300, vol.patient_id
        assert vol.mask.any() and set(np.unique(vol.mask)) == {0, 1}
        tumour, body = vol.mask.astype(bool), (vol.ct > -500) & (vol.pet > 0)
        pet_higher_in_tumour += vol.pet[tumour].mean() > vol.pet[body].mean()
    assert pet_higher_in_tumour >= 16  # all 20 when written; a mis-registered PET breaks it


@pytest.mark.realdata
def test_real_png_slices(shared_data: Path) -> None:
    volumes = read_slices(shared_data / "sts-slices")
    assert [v.patient_id for v in volumes] == SLICE_PATIENTS
    assert sum(len(v.ct) for v in volumes) == 1246
    assert all(168 <= len(v.ct) <= 203 for v in volumes)
    assert all(v.units == "png8" and v.ct.shape[1:] == (256, 256) for v in volumes)
    assert all(v.mask.any() and v.ct.max() <= 255 for v in volumes)
    assert len(slice_inputs(shared_data / "sts-slices")) == 2 * 1246


@pytest.mark.parametrize(
    ("src_shape", "out_shape", "scale", "offset"),
    [
        ((8, 8, 12), (32, 30, 12), (0.25, 0.27, 1.0), (-0.3, -0.2, 0.0)),  # coarse PET, CT slices
        ((9, 7, 5), (6, 11, 13), (1.3, 0.7, 0.4), (-2.2, 0.4, 1.1)),  # shrink, grow, beyond edges
        ((1, 5, 7), (3, 9, 7), (0.2, 0.5, 1.0), (0.0, -0.5, 0.3)),  # a single-voxel axis
    ],
)
def test_axis_aligned_resampling_matches_scipy_affine_transform(
    src_shape, out_shape, scale, offset
) -> None:
    from scipy import ndimage

    from sarcoma_seg.io.grid import _resample_axis_aligned

    src = np.asfortranarray(np.random.default_rng(0).random(src_shape, dtype=np.float32))
    to_src = np.eye(4)
    to_src[[0, 1, 2], [0, 1, 2]] = scale
    to_src[:3, 3] = offset
    expected = ndimage.affine_transform(
        src, np.array(scale), np.array(offset), output_shape=out_shape, order=1, mode="nearest"
    )
    out = _resample_axis_aligned(src, to_src, out_shape)
    assert out.shape == out_shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_pet_already_on_the_ct_grid_is_kept_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarcoma_seg.io import grid

    def no_interpolation(*args: object) -> None:
        raise AssertionError("an axis both grids share was interpolated")

    monkeypatch.setattr(grid, "_linear_along", no_interpolation)
    folder = ibsi_patient(tmp_path, "STS_001")
    pet = np.random.default_rng(2).random(SHAPE, dtype=np.float32) * 8
    save(folder / "PET_image.nii.gz", pet, ras_affine())
    (vol,) = read_nifti(tmp_path)
    np.testing.assert_array_equal(vol.pet, pet.transpose(2, 1, 0))


def test_a_gzip_nifti_inflated_in_one_call_reads_as_nibabel_and_odd_files_fall_back(
    tmp_path: Path,
) -> None:
    import gzip

    from sarcoma_seg.io.nifti import inflated

    data = np.random.default_rng(5).integers(-1000, 1000, (20, 30, 40)).astype(np.int16)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), path)
    image = nib.load(path)
    fast = inflated(image, path)
    assert fast is not image and np.array_equal(fast.get_fdata(), image.get_fdata())
    assert np.array_equal(fast.affine, image.affine)
    raw = gzip.decompress(path.read_bytes())
    odd = {
        "two gzip members": gzip.compress(raw[:200]) + gzip.compress(raw[200:]),
        "truncated": path.read_bytes()[:-30],
        "data past the header's size": gzip.compress(raw + b"\0" * 64),
    }
    for name, content in odd.items():
        other = tmp_path / f"{name}.nii.gz"
        other.write_bytes(content)
        loaded = nib.load(other)
        assert inflated(loaded, other) is loaded, name  # nibabel's own reader takes over
