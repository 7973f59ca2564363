"""The dicom source: series and structure sets found by tags in any layout, contours rasterised by
pixel centres (holes by even-odd), PET in SUV on the CT grid, and the real cross-check against the
IBSI NIfTI masks."""

from pathlib import Path

import numpy as np
import pytest

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io import dicom
from tests import dicom_data
from tests.conftest import data_section
from tests.dicom_data import flat_copy, reference_hu, reference_mask, write_patient, write_pet


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """3D Dice of two binary masks."""
    a, b = a.astype(bool), b.astype(bool)
    return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def canonical(array: np.ndarray) -> np.ndarray:
    """A (slices, rows, cols) array of the synthetic series on the canonical RAS grid: DICOM
    rows run anterior->posterior and columns right->left, so both flip."""
    return array[:, ::-1, ::-1]


def test_shared_layout_reads_ct_mask_and_pet_on_the_ct_grid(tmp_path: Path) -> None:
    write_patient(tmp_path / "in", "P1", pet=True)
    write_patient(tmp_path / "in", "P2")
    volumes, files = dicom.read_dicom(tmp_path / "in", "GTV")
    assert [v.patient_id for v in volumes] == ["P1", "P2"]
    one = volumes[0]
    assert one.spacing == pytest.approx(dicom_data.SPACING)
    assert np.array_equal(one.ct, canonical(reference_hu()).astype(np.float32))
    assert np.array_equal(one.mask, canonical(reference_mask()))
    assert one.pet is not None and np.allclose(one.pet, 2.0)  # GML: stored SUV, as is
    assert volumes[1].pet is None
    assert len(files) == 2 * (dicom_data.SLICES + 1) + dicom_data.SLICES


def test_flat_folder_of_mixed_files_reads_the_same(tmp_path: Path) -> None:
    write_patient(tmp_path / "in", "P1", pet=True)
    write_patient(tmp_path / "in", "P2")
    (tmp_path / "in" / "LICENSE").write_text("CC BY 3.0")  # TCIA downloads carry such files
    flat = flat_copy(tmp_path / "in", tmp_path / "flat")
    layered, _ = dicom.read_dicom(tmp_path / "in", "GTV")
    mixed, files = dicom.read_dicom(flat, "GTV")
    assert all(f.parent == flat for f in files)
    for a, b in zip(layered, mixed, strict=True):
        assert a.patient_id == b.patient_id
        assert np.array_equal(a.ct, b.ct) and np.array_equal(a.mask, b.mask)
        assert (a.pet is None) == (b.pet is None)


def test_bqml_pet_becomes_body_weight_suv(tmp_path: Path) -> None:
    ct = dicom_data.write_ct(tmp_path / "in" / "ct", "P1")
    dicom_data.write_rtstruct(tmp_path / "in" / "rs.dcm", "P1", ct)
    drug = dicom_data.Dataset()
    drug.RadionuclideTotalDose = 4e8  # Bq
    drug.RadionuclideHalfLife = 6588.0  # s, F-18
    drug.RadiopharmaceuticalStartTime = "100000.00"
    info = dicom_data.Sequence([drug])
    write_pet(
        tmp_path / "in" / "pet", "P1", ct, units="BQML", PatientWeight=80.0,
        SeriesTime="114948.00", RadiopharmaceuticalInformationSequence=info,
    )  # fmt: skip
    (volume,), _ = dicom.read_dicom(tmp_path / "in", "GTV")
    # 2 Bq/ml stored; the dose decayed over 6588 s (one half life) to 2e8 Bq
    assert np.allclose(volume.pet, 2.0 * 80000 / 2e8, rtol=1e-5)


def test_unknown_pet_units_are_refused(tmp_path: Path) -> None:
    ct = write_patient(tmp_path / "in", "P1")
    write_pet(tmp_path / "in" / "P1" / "PET", "P1", ct, units="CNTS")
    with pytest.raises(SarcomaSegError, match="PET Units CNTS"):
        dicom.read_dicom(tmp_path / "in", "GTV")


def test_roi_regex_lists_the_names_when_none_or_several_match(tmp_path: Path) -> None:
    ct = dicom_data.write_ct(tmp_path / "in" / "ct", "P1")
    names = ("GTV_Mass_CT", "GTV_node", "Body")
    dicom_data.write_rtstruct(tmp_path / "in" / "rs.dcm", "P1", ct, names=names)
    with pytest.raises(
        SarcomaSegError, match="2 ROIs match data.roi='GTV'.*GTV_Mass_CT, GTV_node, Body"
    ):
        dicom.read_dicom(tmp_path / "in", "GTV")
    with pytest.raises(SarcomaSegError, match="no ROI matches data.roi='PTV'"):
        dicom.read_dicom(tmp_path / "in", "PTV")
    (volume,), _ = dicom.read_dicom(tmp_path / "in", "Mass")
    assert np.array_equal(volume.mask, canonical(reference_mask()))


def test_even_odd_fill_at_pixel_centres() -> None:
    outer = np.array([[0.5, 0.5], [6.5, 0.5], [6.5, 5.5], [0.5, 5.5]])  # (col, row)
    inner = np.array([[2.5, 1.5], [4.5, 1.5], [4.5, 3.5], [2.5, 3.5]])
    beside = np.array([[6.2, 0.0], [7.8, 0.0], [7.8, 0.9], [6.2, 0.9]])  # overlaps nothing
    mask = dicom._even_odd([outer, inner, beside], 8, 9)
    expected = np.zeros((8, 9), bool)
    expected[1:6, 1:7] = True
    expected[2:4, 3:5] = False
    expected[0, 7] = True  # centre (7, 0) inside the small box
    assert np.array_equal(mask, expected)


def test_rtstruct_written_for_a_mask_reads_back_to_it(tmp_path: Path) -> None:
    ct = dicom_data.write_ct(tmp_path / "ct", "P1")
    grid, _ = dicom.read_ct_series(tmp_path / "ct")
    mask = reference_mask()
    mask[3, 0:3, 13:16] = 1  # a second outline touching the edge of the image
    path = dicom.write_rtstruct(grid, mask, tmp_path / "rs.dcm")
    ds = dicom.read_header(path)
    series, frames = dicom._referenced(ds)
    assert series == {ct["series"]} and frames == {ct["frame"]}
    assert ds.StudyInstanceUID == ct["study"]
    structures = dicom.structures_for(grid, [(path, ds)])
    _, contours, name = dicom.choose_roi(structures, "GTV", "P1")
    back = dicom.rasterise(grid, contours, str(path))
    assert dice(back, mask) >= 0.99 and np.array_equal(back, mask)
    for contour in contours.ContourSequence:  # each contour names the slice it lies on
        level = float(contour.ContourData[2])
        k = int(round((level - dicom_data.ORIGIN[2]) / dicom_data.SPACING[0]))
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == ct["instances"][k]


CROSSCHECK = ("STS_002", "STS_019")


def test_predict_refuses_a_dicom_pet_in_another_frame_of_reference(tmp_path: Path) -> None:
    from sarcoma_seg.scans import read_scan

    ct = write_patient(tmp_path / "in", "P1")
    write_pet(tmp_path / "in" / "P1" / "PET", "P1", {**ct, "frame": "1.2.3.4"})
    with pytest.raises(SarcomaSegError, match=r"PT000\.dcm: PET frame of reference differs"):
        read_scan(tmp_path / "in" / "P1" / "CT" / "image", pet=tmp_path / "in" / "P1" / "PET")


@pytest.mark.realdata
def test_real_dicom_equals_the_ibsi_nifti(shared_data: Path) -> None:
    from sarcoma_seg.io import nifti

    volumes, files = dicom.read_dicom(shared_data / "dicom-crosscheck", "GTV")
    assert [v.patient_id for v in volumes] == list(CROSSCHECK)
    folder = shared_data / "ibsi-sts"
    cases = [c for c in nifti._nifti_cases(folder) if c.patient_id in CROSSCHECK]
    nifti = {c.patient_id: nifti._read_case(folder, c) for c in cases}  # only the two
    for volume in volumes:
        reference = nifti[volume.patient_id]
        assert volume.ct.shape == reference.ct.shape
        assert volume.spacing == pytest.approx(reference.spacing, abs=1e-4)
        assert np.abs(volume.ct - reference.ct).max() <= 1.0
        assert dice(volume.mask, reference.mask) >= 0.99
        assert np.abs(volume.pet - reference.pet).max() < 0.01  # both SUV, same resampling


def test_several_sources_merge_into_one_store_and_manifest(tmp_path: Path) -> None:
    from sarcoma_seg import sources
    from sarcoma_seg.io.store import load_volumes, raw_patient_ids
    from tests.test_readers import ibsi_patient

    ibsi_patient(tmp_path / "nifti", "STS_001")
    write_patient(tmp_path / "dicom", "P1", pet=True)
    entries = [{"source": "nifti", "path": str(tmp_path / "nifti")}]
    entries.append({"source": "dicom", "path": str(tmp_path / "dicom")})
    data = data_section(source="synthetic", path=None, roi="GTV", spacing=None, sources=entries)
    manifest = sources.fetch(data, 0, tmp_path / "raw")
    assert raw_patient_ids(tmp_path / "raw") == ["P1", "STS_001"]
    assert manifest["source"] == "nifti+dicom"
    assert [s["patients"] for s in manifest["sources"]] == [["STS_001"], ["P1"]]
    names = [f["name"] for f in manifest["files"]]
    assert len(names) == 2 + 2 * dicom_data.SLICES + 1
    assert {n.split("/")[0] for n in names} == {"0-nifti", "1-dicom"}
    (dicom_volume,) = load_volumes(tmp_path / "raw", ["P1"])
    assert np.array_equal(dicom_volume.mask, canonical(reference_mask()))
    again = sources.fetch(data, 0, tmp_path / "raw2")
    assert again["digest"] == manifest["digest"]  # same inputs, same lineage


def test_huge_dicom_header_is_refused_before_pixels_are_read(tmp_path: Path) -> None:
    def huge(k: int, ds: dicom_data.Dataset) -> None:
        ds.Rows = ds.Columns = 65535  # 6 slices of 65535^2: 25.8 G voxels claimed, 3 KB stored

    write_patient(tmp_path / "in", "P1", per_slice=huge)
    with pytest.raises(SarcomaSegError, match=r"P1\).*refusing it before reading"):
        dicom.read_dicom(tmp_path / "in", "GTV")


def test_pet_in_another_frame_of_reference_is_refused(tmp_path: Path) -> None:
    ct = write_patient(tmp_path / "in", "P1")
    write_pet(tmp_path / "in" / "P1" / "PET", "P1", {**ct, "frame": "1.2.3.4"})
    with pytest.raises(SarcomaSegError, match=r"PT000.dcm \(patient P1\): PET frame of reference"):
        dicom.read_dicom(tmp_path / "in", "GTV")


def test_predict_reads_a_dicom_pet_folder_onto_the_ct(tmp_path: Path) -> None:
    from sarcoma_seg.scans import read_scan

    write_patient(tmp_path / "in", "P1", pet=True)
    scan = read_scan(
        tmp_path / "in" / "P1" / "CT" / "image", pet=tmp_path / "in" / "P1" / "PET" / "image"
    )
    assert scan.pet is not None and scan.pet.shape == scan.ct.shape
    assert np.allclose(scan.pet, 2.0)  # GML: stored SUV, as the dicom source reads it
    with pytest.raises(SarcomaSegError, match=r"CT000\.dcm: modality CT, not PT"):
        read_scan(
            tmp_path / "in" / "P1" / "CT" / "image", pet=tmp_path / "in" / "P1" / "CT" / "image"
        )


@pytest.mark.realdata
def test_real_dicom_pet_folder_equals_the_ibsi_pet_nifti(shared_data: Path) -> None:
    from sarcoma_seg.scans import read_scan

    case = shared_data / "dicom-crosscheck" / "STS_002"
    ct = case / "CT" / "image"
    from_dicom = read_scan(ct, pet=case / "PET" / "image")
    from_nifti = read_scan(ct, pet=shared_data / "ibsi-sts" / "STS_002" / "PET_image.nii.gz")
    assert from_dicom.pet is not None and from_nifti.pet is not None
    assert np.abs(from_dicom.pet - from_nifti.pet).max() < 0.01  # both SUV, same resampling
