"""The `predict` command: every input format, the mask in the input's own geometry, the summary,
and one-line errors that leave no output behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from sarcoma_seg.model import build_unet, save_unet
from sarcoma_seg.model_folder import (
    LEGACY_CONFIG_NAME,
    MODEL_CONFIG_NAME,
    MODEL_FILE,
    read_model_config,
    write_model_config,
)
from sarcoma_seg.predict import lesion_summary, main, montage_slices, stored_config_name
from sarcoma_seg.scans import read_dicom_series, read_nifti_scan
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing

INFERENCE = Inference(
    threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
)


def phantom_hu(shape: tuple[int, int, int] = (6, 40, 48)) -> np.ndarray:
    """(slices, rows, cols) HU with an asymmetric bright block, so any flip would show."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 8:30, 6:40] = 40.0
    hu[2:5, 10:16, 8:14] = 200.0
    return hu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained but real U-Net saved as train saves it, at a tiny image size."""
    folder = tmp_path_factory.mktemp("model")
    section = save_unet(build_unet("resnet18", None, 3), folder / MODEL_FILE, "resnet18")
    pre = Preprocessing((-160.0, 240.0), 32, 3)
    write_model_config(folder / MODEL_CONFIG_NAME, pre, INFERENCE, section)
    return folder


@pytest.fixture(scope="module")
def png_model_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """The same U-Net, declared as trained on 8-bit exported slices, in an older model's folder
    (its config under LEGACY_CONFIG_NAME)."""
    folder = tmp_path_factory.mktemp("png-model")
    (folder / MODEL_FILE).write_bytes((model_dir / MODEL_FILE).read_bytes())
    pre = Preprocessing((0.0, 255.0), 32, 3, units="png8")
    section = read_model_config(model_dir / MODEL_CONFIG_NAME).model
    write_model_config(folder / LEGACY_CONFIG_NAME, pre, INFERENCE, section)
    return folder


def write_dicom_series(folder: Path, hu: np.ndarray, spacing=(2.5, 0.8, 0.7)) -> list[Path]:
    """hu (slices, rows, cols) as an axial CT series: stored values = HU + 1024 (slope 1,
    intercept -1024), files named in shuffled order so that sorting must use the positions."""
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    names = np.random.default_rng(0).permutation(len(hu))
    paths = []
    for k, plane in enumerate(hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, study
        ds.PatientID, ds.FrameOfReferenceUID = "TEST", frame
        ds.ImagePositionPatient = [-20.0, -15.0, 100.0 + k * spacing[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[2]]  # row spacing, column spacing
        ds.SliceThickness = 9.9  # deliberately wrong: the spacing must come from the positions
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (plane + 1024).astype(np.uint16).tobytes()
        path = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_lesion_summary_counts_volume_lesions_and_slice_range() -> None:
    mask = np.zeros((6, 8, 8), np.uint8)
    mask[1:3, 1:3, 1:3] = 1  # 8 voxels
    mask[4, 6:8, 6:8] = 1  # 4 voxels, not touching
    summary = lesion_summary(mask, (2.0, 5.0, 10.0))  # 100 mm3 per voxel
    assert summary == {
        "tumour_volume_cm3": 1.2,
        "lesions": 2,
        "tumour_slices": 3,
        "slice_range": [1, 4],
    }
    assert lesion_summary(np.zeros_like(mask), (1, 1, 1))["slice_range"] is None


def test_montage_spreads_over_the_tumour_slices() -> None:
    mask = np.zeros((30, 4, 4), np.uint8)
    mask[10:20, 1, 1] = 1
    assert montage_slices(mask, 4) == [10, 13, 16, 19]
    assert montage_slices(np.zeros((3, 4, 4)), 12) == [0, 1, 2]


def test_nifti_mask_goes_back_to_the_input_axes_and_affine(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(0, 100, (20, 16, 12)).astype(np.float32)
    # left-posterior-superior storage with permuted axes: far from canonical RAS
    affine = np.array([[0, 0, -0.9, 30], [-0.8, 0, 0, 20], [0, 3.0, 0, -50], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "ct.nii.gz")
    scan = read_nifti_scan(tmp_path / "ct.nii.gz")
    assert scan.spacing == pytest.approx((3.0, 0.8, 0.9))
    written = scan.save_mask((scan.ct > 50).astype(np.uint8), tmp_path / "mask.nii.gz")
    back = nib.load(written)
    assert np.allclose(back.affine, affine)
    assert np.array_equal(np.asarray(back.dataobj), (data > 50).astype(np.uint8))


def test_dicom_series_is_sorted_rescaled_and_placed_like_its_nifti(tmp_path: Path) -> None:
    hu = phantom_hu()
    write_dicom_series(tmp_path / "series", hu)
    scan = read_dicom_series(tmp_path / "series")
    assert scan.spacing == pytest.approx((2.5, 0.8, 0.7))
    # DICOM rows run anterior->posterior and columns right->left: canonical RAS flips both
    assert np.array_equal(scan.ct, hu[:, ::-1, ::-1])
    written = scan.save_mask((scan.ct > 100).astype(np.uint8), tmp_path / "mask.nii.gz")
    back = nib.load(written)
    assert np.array_equal(np.asarray(back.dataobj), (hu > 100).transpose(2, 1, 0))
    # the first voxel sits at the first slice's position, converted from LPS to RAS
    assert np.allclose(back.affine @ [0, 0, 0, 1], [20.0, 15.0, 100.0, 1])


def run_predict(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the console entry point; return exit code, stdout and stderr."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_predict_nifti_writes_mask_overlay_and_summary(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    affine = np.diag([-0.9, 0.9, 3.0, 1.0])
    nib.save(nib.Nifti1Image(phantom_hu().transpose(2, 1, 0), affine), tmp_path / "ct.nii.gz")
    out = tmp_path / "out"
    code, stdout, stderr = run_predict(
        [str(tmp_path / "ct.nii.gz"), "--model", str(model_dir), "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert "slice" in stderr  # the progress bar ran over the slices
    assert sorted(p.name for p in out.iterdir()) == ["mask.nii.gz", "overlay.png", "summary.json"]
    mask = nib.load(out / "mask.nii.gz")
    assert mask.shape == (48, 40, 6) and np.allclose(mask.affine, affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["shape"] == [6, 40, 48] and summary["spacing_mm"] == pytest.approx([3, 0.9, 0.9])
    assert {"tumour_volume_cm3", "lesions", "slice_range", "seconds"} <= set(summary)
    assert 0 <= summary["confidence"] <= 1 and summary["needs_review"] in (True, False, None)
    assert Image.open(out / "overlay.png").size[0] > 100


def test_predict_png_writes_a_png_of_the_same_size(
    tmp_path: Path, png_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60), np.uint8)).save(
        tmp_path / "STS_001_3_.png"
    )
    code, _, stderr = run_predict(
        [
            str(tmp_path / "STS_001_3_.png"),
            "--model",
            str(png_model_dir),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, stderr
    mask = np.asarray(Image.open(tmp_path / "o" / "mask.png"))
    assert mask.shape == (50, 60) and set(np.unique(mask)) <= {0, 1}


def test_predict_hdf5_patient_and_its_label_schema(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    with h5py.File(tmp_path / "lab.h5", "w") as h5:
        h5["ct_data/STS_1"] = phantom_hu()
        h5["label_data/STS_1"] = np.zeros(phantom_hu().shape, np.uint8)
    out = tmp_path / "o"
    code, stdout, stderr = run_predict(
        [
            str(tmp_path / "lab.h5"),
            "--patient",
            "STS_1",
            "--model",
            str(model_dir),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stderr
    with h5py.File(out / "mask.h5") as h5:
        assert h5["label_data/STS_1"].shape == phantom_hu().shape


def corrupt_dicom(tmp_path: Path) -> Path:
    """A series whose third file is cut short."""
    paths = write_dicom_series(tmp_path / "series", phantom_hu())
    paths[2].write_bytes(paths[2].read_bytes()[:-2000])
    return tmp_path / "series"


def mr_dicom(tmp_path: Path) -> Path:
    """A series that is not CT."""
    paths = write_dicom_series(tmp_path / "series", phantom_hu())
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "MR"
    ds.save_as(paths[0])
    return tmp_path / "series"


def nifti_2d(tmp_path: Path) -> Path:
    """A single 2D image stored as NIfTI."""
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    return tmp_path / "flat.nii.gz"


def text_file(tmp_path: Path) -> Path:
    """Not an image at all."""
    (tmp_path / "report.txt").write_text("no CT here")
    return tmp_path / "report.txt"


def h5_without_patient(tmp_path: Path) -> Path:
    """A Kaggle-schema file without the patient asked for."""
    with h5py.File(tmp_path / "lab.h5", "w") as h5:
        h5["ct_data/STS_1"] = phantom_hu()
        h5["label_data/STS_1"] = np.zeros(phantom_hu().shape, np.uint8)
    return tmp_path / "lab.h5"


def nifti_ok(tmp_path: Path) -> Path:
    """A valid CT, for the model errors."""
    nib.save(nib.Nifti1Image(phantom_hu(), np.eye(4)), tmp_path / "ct.nii.gz")
    return tmp_path / "ct.nii.gz"


@pytest.mark.parametrize(
    ("make", "extra", "expected"),
    [
        (corrupt_dicom, [], "IM"),
        (mr_dicom, [], "modality MR, not CT"),
        (nifti_2d, [], "must be 3D"),
        (text_file, [], "not a CT this command reads"),
        (h5_without_patient, ["--patient", "STS_9"], "patient STS_9 not found"),
        (h5_without_patient, [], "needs --patient"),
        (nifti_ok, ["--model", "models:/no-such-model/1"], "models:/no-such-model/1"),
        (nifti_ok, ["--model", "/no/such/folder"], "/no/such/folder"),
        (nifti_ok, ["--pet", "/no/pet.nii.gz"], "pet.nii.gz"),
    ],
)
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(
    tmp_path: Path,
    model_dir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    make,
    extra: list[str],
    expected: str,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    source = make(tmp_path)
    args = [str(source), "--out", str(tmp_path / "out")]
    args += extra if "--model" in extra else ["--model", str(model_dir), *extra]
    code, stdout, stderr = run_predict(args, capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and expected in lines[0], stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out-*"))  # no staging folder left behind


def test_predict_dicom_writes_an_rtstruct_that_reads_back_to_the_mask(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from sarcoma_seg.io import dicom

    hu = phantom_hu()
    paths = write_dicom_series(tmp_path / "series", hu)
    out = tmp_path / "out"
    code, _, stderr = run_predict(
        [str(tmp_path / "series"), "--model", str(model_dir), "--out", str(out)], capsys
    )
    assert code == 0, stderr
    assert {"mask.nii.gz", dicom.RTSTRUCT_NAME} <= {p.name for p in out.iterdir()}
    first = pydicom.dcmread(paths[0])
    grid, _ = dicom.read_ct_series(tmp_path / "series")
    nifti = np.asarray(nib.load(out / "mask.nii.gz").dataobj).transpose(2, 1, 0)
    for rtstruct, expected in [
        (out / dicom.RTSTRUCT_NAME, nifti),  # whatever the untrained model found
        (None, (hu > 100).astype(np.uint8)),  # a known mask of the bright block
    ]:
        if rtstruct is None:
            scan = read_dicom_series(tmp_path / "series")
            scan.save_mask((scan.ct > 100).astype(np.uint8), tmp_path / "m.nii.gz")
            rtstruct = tmp_path / dicom.RTSTRUCT_NAME
        ds = pydicom.dcmread(rtstruct)
        assert ds.StudyInstanceUID == first.StudyInstanceUID
        frame = ds.ReferencedFrameOfReferenceSequence[0]
        assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == first.SeriesInstanceUID
        _, contours, _ = dicom.choose_roi([(rtstruct, ds)], "GTV", "TEST")
        back = dicom.rasterise(grid, contours, str(rtstruct))
        # the grid sorts slices by position, as write_dicom_series numbers them (k)
        overlap = 2 * float((back & expected).sum())
        assert overlap >= 0.99 * float(back.sum() + expected.sum())  # Dice >= 0.99
        assert np.array_equal(back, expected)
        images = {
            c.ContourImageSequence[0].ReferencedSOPInstanceUID
            for c in contours.get("ContourSequence", [])
        }
        assert images <= {h.SOPInstanceUID for h in grid.headers}


def test_a_registry_model_is_fetched_with_its_config_by_either_name() -> None:
    both = {MODEL_FILE, MODEL_CONFIG_NAME, LEGACY_CONFIG_NAME}
    assert stored_config_name(both) == MODEL_CONFIG_NAME
    assert (
        stored_config_name({MODEL_FILE, LEGACY_CONFIG_NAME}) == LEGACY_CONFIG_NAME
    )  # an older version
    assert stored_config_name({MODEL_FILE, "MLmodel"}) is None


def run_command(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console command (sarcoma_seg.predict's cli) in a fresh interpreter, this checkout's
    code."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "sarcoma_seg.predict", *args, "--no-progress"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)


def test_console_command_prints_the_summary_and_writes_everything(
    tmp_path: Path, model_dir: Path
) -> None:
    nib.save(nib.Nifti1Image(phantom_hu().transpose(2, 1, 0), np.eye(4)), tmp_path / "ct.nii.gz")
    done = run_command(["ct.nii.gz", "--model", str(model_dir), "--out", "out"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = done.stdout.splitlines()  # flushed before the command's quick exit
    assert json.loads(line)["shape"] == [6, 40, 48]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "mask.nii.gz",
        "overlay.png",
        "summary.json",
    ]


def test_console_command_fails_on_a_bad_scan_while_its_model_loads(
    tmp_path: Path, model_dir: Path
) -> None:
    nib.save(nib.Nifti1Image(phantom_hu().transpose(2, 1, 0), np.eye(4)), tmp_path / "ct.nii.gz")
    whole = (tmp_path / "ct.nii.gz").read_bytes()
    (tmp_path / "ct.nii.gz").write_bytes(whole[: len(whole) // 2])  # header fine, data cut
    done = run_command(["ct.nii.gz", "--model", str(model_dir), "--out", "out"], tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "ct.nii.gz" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out-*"))  # no staging folder left behind
