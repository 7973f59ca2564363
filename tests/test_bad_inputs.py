"""Every bad input stops the download stage with one line naming the file and patient, exit
code 1, and nothing written: no data/raw, no temporary folder left behind."""

import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from sarcoma_seg import kaggle_source
from sarcoma_seg.errors import run_cli
from stages import download
from tests import dicom_data
from tests.conftest import tiny_params
from tests.test_readers import ibsi_patient, ras_affine, reference_ct, reference_mask, slice_pair
from tests.test_volumes import patient, write_h5


def h5_case(tweak: Callable[[dict], None]) -> Callable[[Path], tuple[dict, str]]:
    """An hdf5 source whose patient STS_007 is broken by tweak."""

    def build(root: Path) -> tuple[dict, str]:
        arrays = patient()
        tweak(arrays)
        path = write_h5(root, {"STS_002": patient(), "STS_007": arrays})
        return {"source": "hdf5", "path": str(path)}, "STS_007"

    return build


def h5_external(root: Path) -> tuple[dict, str]:
    """An hdf5 source whose CT data live in an external raw file."""
    (root / "outside.bin").write_bytes(np.zeros(4 * 8 * 8, np.float32).tobytes())
    path = write_h5(root, {"STS_002": patient()})
    with h5py.File(path, "a") as h5:
        del h5["ct_data/STS_002"]
        h5["ct_data"].create_dataset(
            "STS_002", (4, 8, 8), np.float32, external=[(str(root / "outside.bin"), 0, 1024)]
        )
    return {"source": "hdf5", "path": str(path)}, "STS_002"


def nifti_case(**broken: object) -> Callable[[Path], tuple[dict, str]]:
    """A nifti source (per-patient layout) whose patient STS_004 is built with broken parts."""

    def build(root: Path) -> tuple[dict, str]:
        ibsi_patient(root / "in", "STS_001")
        ibsi_patient(root / "in", "STS_004", **broken)
        return {"source": "nifti", "path": str(root / "in")}, "STS_004"

    return build


def nifti_truncated(root: Path) -> tuple[dict, str]:
    """A CT file cut in half."""
    folder = ibsi_patient(root / "in", "STS_004")
    data = (folder / "CT_image.nii.gz").read_bytes()
    (folder / "CT_image.nii.gz").write_bytes(data[: len(data) // 2])
    return {"source": "nifti", "path": str(root / "in")}, "STS_004"


def nifti_without_mask(root: Path) -> tuple[dict, str]:
    """A patient with an image but no mask."""
    (ibsi_patient(root / "in", "STS_004") / "CT_mask.nii.gz").unlink()
    ibsi_patient(root / "in", "STS_001")
    return {"source": "nifti", "path": str(root / "in")}, "STS_004"


def empty_folder(root: Path) -> tuple[dict, str]:
    """A nifti source pointing at an empty folder."""
    (root / "in").mkdir()
    return {"source": "nifti", "path": str(root / "in")}, "in"


def slices_duplicate(root: Path) -> tuple[dict, str]:
    """The same patient slice in two exported folders."""
    slice_pair(root / "in", "_dir", "STS_003", 27)
    slice_pair(root / "in", "_valid_dir", "STS_003", 27)
    return {"source": "slices", "path": str(root / "in")}, "STS_003"


def slices_without_mask(root: Path) -> tuple[dict, str]:
    """A PNG slice whose mask is missing."""
    slice_pair(root / "in", "_dir", "STS_003", 1)
    image = slice_pair(root / "in", "_dir", "STS_003", 2)
    (root / "in" / "mask_images_dir" / image.name).unlink()
    return {"source": "slices", "path": str(root / "in")}, "STS_003"


class ZipApi:
    """Stands in for KaggleApi, serving a zip with an unsafe member."""

    def __init__(self, member: str) -> None:
        self.member = member

    def dataset_download_files(self, dataset: str, path: str, **_: object) -> None:
        with zipfile.ZipFile(Path(path) / "soft-tissue-sarcoma.zip", "w") as archive:
            archive.writestr("study_list.csv", "Patient ID\nSTS_002\n")
            archive.writestr(self.member, "x")


def kaggle_member(member: str) -> Callable[[Path], tuple[dict, str]]:
    """A kaggle source whose archive holds member."""

    def build(root: Path) -> tuple[dict, str]:
        kaggle_source.make_api = lambda: ZipApi(member)  # restored by the fixture below
        return {"source": "kaggle"}, member

    return build


BAD_DICOM = "STS_004"


def dicom_case(*named: str, roi: str = "GTV", **ct_tags: object) -> Callable:
    """A dicom source: STS_001 fine, STS_004 built with ct_tags (see dicom_data.write_ct) and
    then broken by the returned builder's tweak; named are the parts the error must hold."""

    def wrap(tweak: Callable[[Path, dict], None] | None = None) -> Callable:
        def build(root: Path) -> tuple[dict, tuple[str, ...]]:
            dicom_data.write_patient(root / "in", "STS_001")
            ct = dicom_data.write_patient(root / "in", BAD_DICOM, **ct_tags)
            if tweak:
                tweak(root / "in" / BAD_DICOM, ct)
            data = {"source": "dicom", "path": str(root / "in"), "roi": roi}
            return data, (f"(patient {BAD_DICOM})", *named)

        return build

    return wrap


def _rewrite_rtstruct(**kwargs: object) -> Callable[[Path, dict], None]:
    """Replace STS_004's RTSTRUCT by one written with kwargs."""

    def tweak(folder: Path, ct: dict) -> None:
        dicom_data.write_rtstruct(folder / "CT" / "mask" / "RS.dcm", BAD_DICOM, ct, **kwargs)

    return tweak


def _truncate(folder: Path, ct: dict) -> None:
    """Cut the last 100 bytes (of its pixel data) off the third CT file."""
    data = ct["files"][2].read_bytes()
    ct["files"][2].write_bytes(data[:-100])


def _second_series(folder: Path, ct: dict) -> None:
    """A second CT series of the same patient."""
    dicom_data.write_ct(folder / "CT2", BAD_DICOM)


def _non_numeric_slope(folder: Path, ct: dict) -> None:
    """RescaleSlope 'abc' in one file (pydicom refuses to write it, so the bytes are edited)."""
    path = ct["files"][1]
    dicom_data.set_tag(path, "RescaleSlope", "2.5")
    element = bytes.fromhex("28005310") + b"DS" + (4).to_bytes(2, "little")
    data = path.read_bytes()
    assert data.count(element + b"2.5 ") == 1
    path.write_bytes(data.replace(element + b"2.5 ", element + b"abc "))


def _shift(k_bad: int, offset: tuple[float, float, float]) -> Callable:
    """per_slice hook moving slice k_bad's position by offset (mm)."""

    def move(k: int, ds: object) -> None:
        if k == k_bad:
            ds.ImagePositionPatient = [p + o for p, o in zip(ds.ImagePositionPatient, offset)]

    return move


def _tilt(k: int, ds: object) -> None:
    """Each slice's origin moves 0.5 mm posterior: a gantry tilt."""
    x, y, z = ds.ImagePositionPatient
    ds.ImagePositionPatient = [x, y + 0.5 * k, z]


def _odd_shape(k: int, ds: object) -> None:
    """Slice 3 is 8 x 32 pixels (the same number as 16 x 16)."""
    if k == 3:
        ds.Rows, ds.Columns = 8, 32


def sources_shared_patient(root: Path) -> tuple[dict, tuple[str, ...]]:
    """data.sources: the same patient id in a nifti and a dicom folder."""
    ibsi_patient(root / "nifti", "STS_004")
    dicom_data.write_patient(root / "dicom", "STS_004")
    entries = [{"source": "nifti", "path": str(root / "nifti")}]
    entries.append({"source": "dicom", "path": str(root / "dicom")})
    named = ("patient STS_004", "data.sources[0] (nifti", "data.sources[1] (dicom")
    return {"sources": entries}, named


DICOM_CASES = {
    "sources-shared-patient": sources_shared_patient,
    "dicom-rtstruct-other-frame": dicom_case("frame of reference")(
        _rewrite_rtstruct(frame="1.2.3.4.5")
    ),
    "dicom-missing-slice": dicom_case("CT003.dcm", "missing or unevenly")(
        lambda folder, ct: ct["files"][2].unlink()
    ),
    "dicom-duplicated-slice": dicom_case("duplicated slice", per_slice=_shift(3, (0, 0, -3.0)))(),
    "dicom-uneven-slices": dicom_case("CT005.dcm", "unevenly", per_slice=_shift(5, (0, 0, 1.0)))(),
    "dicom-gantry-tilt": dicom_case("gantry tilt", per_slice=_tilt)(),
    "dicom-oblique": dicom_case(
        "CT000.dcm", "oblique", ImageOrientationPatient=[1, 0, 0, 0, 0.9848, 0.1736]
    )(),
    "dicom-contour-off-slice": dicom_case("RS.dcm", "lies on no CT slice")(
        _rewrite_rtstruct(contours=[dicom_data.square(2.5, (3.5, 9.5), (2.5, 8.5))])
    ),
    "dicom-no-matching-roi": dicom_case("RS.dcm", "no ROI matches", "Body, PTV")(
        _rewrite_rtstruct(names=("Body", "PTV"))
    ),
    "dicom-several-rois": dicom_case("2 ROIs match", "GTV_a, GTV_b")(
        _rewrite_rtstruct(names=("GTV_a", "GTV_b"))
    ),
    "dicom-truncated": dicom_case("CT002.dcm", "truncated")(_truncate),
    "dicom-mixed-shapes": dicom_case("CT003.dcm", "mixed slice shapes", per_slice=_odd_shape)(),
    "dicom-two-ct-series": dicom_case("2 CT series")(_second_series),
    "dicom-pixel-spacing-0": dicom_case("PixelSpacing", PixelSpacing=[0, 1.25])(),
    "dicom-non-numeric-slope": dicom_case("CT001.dcm", "RescaleSlope", "not numeric")(
        _non_numeric_slope
    ),
}


CASES = {
    "h5-missing-group": h5_case(lambda a: None),  # replaced below: needs a whole file
    "h5-nan-ct": h5_case(lambda a: a["ct_data"].__setitem__((0, 0, 0), np.nan)),
    "h5-shape-mismatch": h5_case(lambda a: a.__setitem__("label_data", np.zeros((4, 8, 9)))),
    "h5-mask-not-labels": h5_case(
        lambda a: a.__setitem__("label_data", np.full((4, 8, 8), 0.5, np.float32))
    ),
    "h5-patient-without-label": h5_case(lambda a: a.pop("label_data")),
    "h5-external-dataset": h5_external,
    "nifti-truncated": nifti_truncated,
    "nifti-shape-mismatch": nifti_case(mask=reference_mask()[:, :, :4]),
    "nifti-spacing-mismatch": nifti_case(mask_affine=ras_affine(spacing=(2.0, 1.5, 5.0))),
    "nifti-nan": nifti_case(ct=np.where(reference_ct() > 0, np.nan, reference_ct())),
    "nifti-mask-not-labels": nifti_case(mask=reference_mask().astype(np.float32) * 0.5),
    "nifti-image-without-mask": nifti_without_mask,
    "empty-folder": empty_folder,
    "slices-duplicate-id": slices_duplicate,
    "slices-image-without-mask": slices_without_mask,
    "archive-dotdot": kaggle_member("../evil.txt"),
    "archive-absolute": kaggle_member("/tmp/evil.txt"),
}


def missing_group(root: Path) -> tuple[dict, str]:
    """An hdf5 file with no label_data group."""
    path = root / "lab_petct_vox_5.00mm.h5"
    with h5py.File(path, "w") as h5:
        h5.create_group("ct_data").create_dataset("STS_002", data=np.zeros((4, 8, 8)))
    return {"source": "hdf5", "path": str(path)}, "label_data"


CASES["h5-missing-group"] = missing_group
CASES |= DICOM_CASES


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder as the working directory; kaggle's API restored afterwards."""
    monkeypatch.setattr(kaggle_source, "make_api", kaggle_source.make_api)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(
    project: Path, tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, named = CASES[case](tmp_path)
    params = tiny_params()
    params["data"].update(data)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(download.main)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for part in (named,) if isinstance(named, str) else named:
        assert part in lines[0], lines[0]
    assert (
        sorted(p.name for p in project.iterdir()) == ["params.yaml"]
        or sorted(p.name for p in (project / "data").iterdir()) == []
    ), list(project.rglob("*"))
