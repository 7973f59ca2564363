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
    assert named in lines[0], lines[0]
    assert (
        sorted(p.name for p in project.iterdir()) == ["params.yaml"]
        or sorted(p.name for p in (project / "data").iterdir()) == []
    ), list(project.rglob("*"))
