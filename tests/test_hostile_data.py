"""Hostile data: inputs that try to read other files, claim huge sizes in tiny headers, or carry
suspect content. Each stops the download stage (or `predict`) with exactly one `error:` line
naming the file and patient, exit code 1, nothing written and the previous outputs intact; the
huge-header cases run in a subprocess whose peak memory is measured."""

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from sarcoma_seg import kaggle_source, predict
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.io.store import STORE, load_volumes, raw_patient_ids, write_store
from sarcoma_seg.volumes import (
    MAX_ARCHIVE_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_MEMBER_BYTES,
    MAX_PNG_PIXELS,
    MAX_SLICES,
    MAX_VOXELS,
    Volume,
)
from stages import download
from tests.conftest import ROOT, tiny_params
from tests.test_readers import (
    SHAPE,
    ibsi_patient,
    ras_affine,
    reference_ct,
    save,
    slice_pair,
    write_png,
)
from tests.test_volumes import patient, write_h5

MEMORY_LIMIT_KIB = 1 << 20  # 1 GiB: the huge-header cases must stay well below it
PREVIOUS = {"manifest.json": b'{"previous": true}\n', "volumes.h5": b"previous store"}


@dataclass
class Case:
    """One hostile input: the data params, what the error line must name, and a stand-in for
    the Kaggle API when the source is kaggle."""

    data: dict
    named: tuple[str, ...]
    api: object | None = None
    extra: dict = field(default_factory=dict)


# --- builders of hostile files -------------------------------------------------------------


def h5_source(root: Path, tweak: Callable[[h5py.File], None]) -> Path:
    """A Kaggle-schema file of two valid patients, then changed by tweak."""
    path = write_h5(root, {"STS_002": patient(), "STS_007": patient()})
    with h5py.File(path, "a") as h5:
        tweak(h5)
    return path


def other_h5(root: Path) -> Path:
    """Another HDF5 file on the host, holding data the input must not pull in."""
    path = root / "elsewhere.h5"
    with h5py.File(path, "w") as h5:
        h5["secret"] = np.full((4, 8, 8), 1234.0, np.float32)
    return path


def external_link(root: Path) -> Path:
    """STS_007's CT is an ExternalLink to a dataset of another file."""
    target = other_h5(root)

    def tweak(h5: h5py.File) -> None:
        del h5["ct_data/STS_007"]
        h5["ct_data/STS_007"] = h5py.ExternalLink(str(target), "/secret")

    return h5_source(root, tweak)


def soft_link_loop(h5: h5py.File) -> None:
    """STS_007's CT is a soft link to itself."""
    del h5["ct_data/STS_007"]
    h5["ct_data/STS_007"] = h5py.SoftLink("/ct_data/STS_007")


def soft_link(h5: h5py.File) -> None:
    """STS_007's CT is a soft link to STS_002's CT (the same scan under two ids)."""
    del h5["ct_data/STS_007"]
    h5["ct_data/STS_007"] = h5py.SoftLink("/ct_data/STS_002")


def virtual_dataset(root: Path) -> Path:
    """STS_007's CT is a virtual dataset mapping another file's data."""
    target = other_h5(root)

    def tweak(h5: h5py.File) -> None:
        del h5["ct_data/STS_007"]
        layout = h5py.VirtualLayout((4, 8, 8), np.float32)
        layout[:] = h5py.VirtualSource(str(target), "secret", shape=(4, 8, 8))
        h5["ct_data"].create_virtual_dataset("STS_007", layout)

    return h5_source(root, tweak)


def declared_huge(h5: h5py.File) -> None:
    """STS_007's CT declares 2000 x 1000 x 800 float32 (6.4 GB) and stores nothing."""
    del h5["ct_data/STS_007"]
    h5["ct_data"].create_dataset("STS_007", shape=(2000, 1000, 800), dtype=np.float32)


def declared_slices(h5: h5py.File) -> None:
    """STS_007's mask declares 5000 slices of 2 x 2 voxels (few voxels, too many slices)."""
    del h5["label_data/STS_007"]
    h5["label_data"].create_dataset("STS_007", shape=(5000, 2, 2), dtype=np.uint8)


def nifti_header_only(path: Path, shape: tuple[int, ...]) -> Path:
    """A gzipped NIfTI whose header claims shape of int16 but holds 64 bytes of data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), code=1)
    buffer = io.BytesIO()
    header.write_to(buffer)
    raw = buffer.getvalue()
    raw += b"\0" * (int(header["vox_offset"]) - len(raw)) + b"\0" * 64
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw))
    return path


def nifti_with_affine(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose sform is exactly affine (nibabel refuses to build one from a singular
    affine, so the header rows are set by hand)."""
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["sform_code"], header["qform_code"] = 1, 0
    header["srow_x"], header["srow_y"], header["srow_z"] = affine[0], affine[1], affine[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, None, header=header), path)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1 x 1 grayscale PNG whose IHDR is rewritten to claim width x height (CRC fixed)."""
    png = bytearray(write_png(path, np.zeros((1, 1), np.uint8)).read_bytes())
    struct.pack_into(">II", png, 16, width, height)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))  # IHDR type + data
    path.write_bytes(bytes(png))
    return path


def zip_declaring(path: Path, members: dict[str, int]) -> Path:
    """A zip whose members are tiny but whose directory declares the given uncompressed sizes
    (the local headers too), as a bomb's would."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in members:
            archive.writestr(name, b"x")
    data = bytearray(path.read_bytes())
    for signature, size_at in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        start = 0
        for name, size in members.items():
            start = data.index(signature, start)
            name_at = 46 if signature == b"PK\x01\x02" else 30
            assert data[start + name_at : start + name_at + len(name)] == name.encode()
            struct.pack_into("<I", data, start + size_at, size)
            start += 4
    path.write_bytes(bytes(data))
    return path


class ArchiveApi:
    """Stands in for KaggleApi: serves the zip that build writes."""

    def __init__(self, build: Callable[[Path], Path]) -> None:
        self.build = build

    def dataset_download_files(self, dataset: str, path: str, **_: object) -> None:
        """Write the archive where kaggle would."""
        self.build(Path(path) / "soft-tissue-sarcoma.zip")


def many_members(path: Path) -> Path:
    """An archive of MAX_ARCHIVE_MEMBERS + 1 empty files."""
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(MAX_ARCHIVE_MEMBERS + 1):
            archive.writestr(f"slices/{index:05d}.txt", b"")
    return path


# --- the cases ------------------------------------------------------------------------------


def hdf5(path: Path, *named: str) -> Case:
    """A case for source hdf5 at path."""
    return Case({"source": "hdf5", "path": str(path)}, (path.name, *named))


def nifti(root: Path, *named: str) -> Case:
    """A case for source nifti at root/in."""
    return Case({"source": "nifti", "path": str(root / "in")}, named)


def nifti_ct(file: Callable[[Path], Path]) -> Callable[[Path], Case]:
    """STS_004's CT replaced by what file writes; STS_001 is valid."""

    def build(root: Path) -> Case:
        ibsi_patient(root / "in", "STS_001")
        folder = ibsi_patient(root / "in", "STS_004")
        file(folder / "CT_image.nii.gz")
        return nifti(root, "STS_004", "CT_image.nii.gz")

    return build


def png_mask(mask: np.ndarray) -> Callable[[Path], Case]:
    """A slices source whose STS_003 slice 2 has mask as its mask."""

    def build(root: Path) -> Case:
        slice_pair(root / "in", "_dir", "STS_003", 1)
        image = slice_pair(root / "in", "_dir", "STS_003", 2, size=mask.shape)
        write_png(root / "in" / "mask_images_dir" / image.name, mask)
        return Case({"source": "slices", "path": str(root / "in")}, ("STS_003", image.name))

    return build


def png_huge(root: Path) -> Case:
    """A slice image whose header claims 20000 x 20000 pixels."""
    image = slice_pair(root / "in", "_dir", "STS_003", 1)
    png_claiming(image, 20000, 20000)
    return Case({"source": "slices", "path": str(root / "in")}, ("STS_003", image.name))


def duplicate_patients(root: Path) -> Case:
    """The same CT and mask under two patient ids."""
    ibsi_patient(root / "in", "STS_001")
    ibsi_patient(root / "in", "STS_009")
    return nifti(root, "STS_001", "STS_009")


def pet_one_voxel(root: Path) -> Case:
    """A PET of one voxel, covering one voxel of the CT grid."""
    folder = ibsi_patient(root / "in", "STS_004")
    save(folder / "PET_image.nii.gz", np.ones((1, 1, 1), np.float32), ras_affine())
    return nifti(root, "STS_004", "PET_image.nii.gz", "covers only")


def image_like_nifti_mask(root: Path) -> Case:
    """A mask holding 0..255 (99.6% of voxels > 0): an image, not labels."""
    folder = ibsi_patient(root / "in", "STS_004")
    mask = (np.arange(np.prod(SHAPE)) % 256).reshape(SHAPE).astype(np.uint8)
    save(folder / "CT_mask.nii.gz", mask, ras_affine())
    return nifti(root, "STS_004", "CT_mask.nii.gz", "distinct values")


def archive(build: Callable[[Path], Path], *named: str) -> Callable[[Path], Case]:
    """A kaggle source whose download is the archive build writes."""

    def case(root: Path) -> Case:
        return Case({"source": "kaggle"}, ("soft-tissue-sarcoma.zip", *named), ArchiveApi(build))

    return case


GiB = 1 << 30
CASES: dict[str, Callable[[Path], Case]] = {
    "h5-external-link": lambda r: hdf5(external_link(r), "STS_007", "external link", "elsewhere"),
    "h5-soft-link-loop": lambda r: hdf5(h5_source(r, soft_link_loop), "STS_007", "soft link"),
    "h5-soft-link": lambda r: hdf5(h5_source(r, soft_link), "STS_007", "/ct_data/STS_002"),
    "h5-virtual-dataset": lambda r: hdf5(virtual_dataset(r), "STS_007", "outside the file"),
    "h5-declared-huge": lambda r: hdf5(h5_source(r, declared_huge), "STS_007", "declares"),
    "nifti-claims-32767-cubed": nifti_ct(lambda p: nifti_header_only(p, (32767,) * 3)),
    "nifti-singular-affine": nifti_ct(
        lambda p: nifti_with_affine(p, reference_ct(), np.diag([2.0, 1.5, 0.0, 1.0]))
    ),
    "nifti-zero-affine": nifti_ct(lambda p: nifti_with_affine(p, reference_ct(), np.zeros((4, 4)))),
    "nifti-zero-length-axis": nifti_ct(
        lambda p: save(p, np.zeros((20, 18, 0), np.float32), ras_affine())
    ),
    "nifti-claims-5000-slices": nifti_ct(lambda p: nifti_header_only(p, (4, 4, 5000))),
    "h5-declares-5000-slices": lambda r: hdf5(
        h5_source(r, declared_slices), "STS_007", "5000 slices"
    ),
    "png-20000-squared": png_huge,
    "png-image-like-mask": png_mask((np.arange(12 * 10) % 256).reshape(12, 10).astype(np.uint8)),
    "nifti-image-like-mask": image_like_nifti_mask,
    "duplicate-patients": duplicate_patients,
    "pet-covers-one-voxel": pet_one_voxel,
    "archive-too-many-members": archive(many_members, "members"),
    "archive-1-GiB-member": archive(
        lambda p: zip_declaring(p, {"study_list.csv": 10, "big.bin": GiB}), "big.bin"
    ),
    "archive-total-size-bomb": archive(
        lambda p: zip_declaring(p, {f"part{i}.bin": MAX_MEMBER_BYTES for i in range(5)}),
        "in all",
    ),
}
HUGE_HEADERS = ("h5-declared-huge", "nifti-claims-32767-cubed", "png-20000-squared")


def test_bounds_hold_the_hostile_claims() -> None:
    """The hostile inputs above are beyond the bounds, the study's data well within them."""
    assert 32767**3 > MAX_VOXELS >= 512 * 512 * 200  # a real CT reads
    assert 5000 > MAX_SLICES >= 203  # the study's PNG patients have up to 203 slices
    assert 20000 * 20000 > MAX_PNG_PIXELS >= 512 * 512
    assert GiB > MAX_MEMBER_BYTES and 5 * MAX_MEMBER_BYTES > MAX_ARCHIVE_BYTES


# --- running the download stage -------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding the previous good data/raw; kaggle's API restored afterwards."""
    monkeypatch.setattr(kaggle_source, "make_api", kaggle_source.make_api)
    raw = tmp_path / "project" / "data" / "raw"
    raw.mkdir(parents=True)
    for name, content in PREVIOUS.items():
        (raw / name).write_bytes(content)
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def write_params(project: Path, data: dict) -> None:
    """params.yaml: the tiny test params with data replaced by the case's."""
    params = tiny_params()
    params["data"].update(data)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def assert_nothing_written(project: Path) -> None:
    """data/ holds the previous raw folder and nothing else: no staging folder left."""
    assert sorted(p.name for p in (project / "data").iterdir()) == ["raw"]
    found = {p.name: p.read_bytes() for p in (project / "data" / "raw").iterdir()}
    assert found == PREVIOUS


def assert_one_error_line(stderr: str, named: tuple[str, ...]) -> str:
    """Exactly one line, starting error:, naming every part of named."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for part in named:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_one_line_and_keeps_previous_data(
    project: Path,
    tmp_path: Path,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name](tmp_path)
    if case.api is not None:
        monkeypatch.setattr(kaggle_source, "make_api", lambda: case.api)
    write_params(project, case.data)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(download.main)
    assert exit_info.value.code == 1
    assert_one_error_line(capsys.readouterr().err, case.named)
    assert_nothing_written(project)


# Runs cmd and reports its peak RSS. Linux keeps a process's peak across exec, and a child forked
# from pytest starts with pytest's own (large, after real-data tests) mapping: so a small launcher
# process forks the measured command, whose peak then starts from the launcher's few MiB.
MEASURE = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
    "sys.exit(code)"
)


def run_measured(cmd: list[str], cwd: Path) -> tuple[int, str, int]:
    """Run cmd with this worktree's code; return exit code, stderr and its peak RSS in KiB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # not the editable install of another tree
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], cwd=cwd, env=env, capture_output=True, text=True
    )
    *lines, peak = done.stderr.rstrip("\n").split("\n")
    return done.returncode, "\n".join(lines) + "\n", int(peak)  # KiB on Linux


@pytest.mark.parametrize("name", HUGE_HEADERS)
def test_huge_header_is_refused_without_allocating(project: Path, tmp_path: Path, name: str):
    case = CASES[name](tmp_path)
    write_params(project, case.data)
    code, stderr, peak_kib = run_measured([sys.executable, "-m", "stages.download"], project)
    assert code == 1, stderr
    assert_one_error_line(stderr, case.named)
    assert_nothing_written(project)
    assert peak_kib < MEMORY_LIMIT_KIB, f"{name}: peak RSS {peak_kib / 1024:.0f} MiB"


# --- suspect but valid data -----------------------------------------------------------------


def test_study_png_masks_with_labels_0_1_2_still_read(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mask = np.zeros((12, 10), np.uint8)
    mask[2:4, 2:4], mask[6, 6] = 1, 2
    png_mask(mask)(tmp_path)
    write_params(project, {"source": "slices", "path": str(tmp_path / "in")})
    run_cli(download.main)
    manifest = json.loads((project / "data" / "raw" / "manifest.json").read_text())
    (sts,) = manifest["patients"]
    assert sts["id"] == "STS_003" and sts["tumour_voxels"] == 1 + 5  # slice 1's pixel + 5
    assert manifest["warnings"] == []
    assert "warning" not in capsys.readouterr().err


def test_odd_data_warns_on_stderr_and_in_the_manifest(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    no_tumour = patient()
    no_tumour["label_data"][:] = 0
    no_tumour["ct_data"] += 1.0  # three different patients
    padded = patient()
    padded["ct_data"][0] = -3024.0  # padding outside the field of view
    path = write_h5(tmp_path, {"STS_002": patient(), "STS_005": no_tumour, "STS_009": padded})
    write_params(project, {"source": "hdf5", "path": str(path)})
    run_cli(download.main)
    manifest = json.loads((project / "data" / "raw" / "manifest.json").read_text())
    warnings = manifest["warnings"]
    assert len(warnings) == 2, warnings
    assert "STS_005" in warnings[0] and "no tumour" in warnings[0]
    assert "STS_009" in warnings[1] and "-3024" in warnings[1]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert err == [f"warning: {w}" for w in warnings]


def test_warning_count_is_an_mlflow_tag(tmp_path: Path) -> None:
    import mlflow

    from sarcoma_seg.tracking import log_manifest

    manifest = {"source": "hdf5", "dataset": "hdf5", "digest": "0" * 64, "warnings": ["a", "b"]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("warnings")  # not an experiment id an earlier test left active
    with mlflow.start_run() as run:
        log_manifest(path)
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["data.warnings"] == "2"


# --- predict's readers ----------------------------------------------------------------------


def predict_h5(root: Path, tweak: Callable[[h5py.File], None]) -> tuple[Path, str]:
    """An HDF5 scan for predict: file and patient STS_007."""
    return h5_source(root, tweak), "STS_007"


PREDICT_CASES: dict[str, Callable[[Path], tuple[list[str], tuple[str, ...]]]] = {
    "h5-external-link": lambda r: (
        [str(external_link(r)), "--patient", "STS_007"],
        ("STS_007", "external link"),
    ),
    "h5-soft-link-loop": lambda r: (
        [str(h5_source(r, soft_link_loop)), "--patient", "STS_007"],
        ("STS_007", "soft link"),
    ),
    "h5-virtual-dataset": lambda r: (
        [str(virtual_dataset(r)), "--patient", "STS_007"],
        ("STS_007", "outside the file"),
    ),
    "nifti-singular-affine": lambda r: (
        [str(nifti_with_affine(r / "ct.nii.gz", reference_ct(), np.diag([1.0, 1, 0, 1])))],
        ("ct.nii.gz", "singular"),
    ),
    "nifti-zero-length-axis": lambda r: (
        [str(save(r / "ct.nii.gz", np.zeros((20, 0, 6), np.float32), ras_affine()))],
        ("ct.nii.gz", "length 0"),
    ),
    "pet-covers-one-voxel": lambda r: (
        [
            str(save(r / "ct.nii.gz", reference_ct(), ras_affine())),
            "--pet",
            str(save(r / "pet.nii.gz", np.ones((1, 1, 1), np.float32), ras_affine())),
        ],
        ("pet.nii.gz", "covers only"),
    ),
}
PREDICT_HUGE = {
    "h5-declared-huge": lambda r: (
        [str(h5_source(r, declared_huge)), "--patient", "STS_007"],
        ("STS_007", "declares"),
    ),
    "nifti-claims-32767-cubed": lambda r: (
        [str(nifti_header_only(r / "ct.nii.gz", (32767,) * 3))],
        ("ct.nii.gz", "32767"),
    ),
    "png-20000-squared": lambda r: (
        [str(png_claiming(r / "STS_003_1_.png", 20000, 20000))],
        ("STS_003_1_.png", "20000 x 20000"),
    ),
}


@pytest.fixture
def previous_prediction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An earlier prediction folder that a failed predict must leave as it was."""
    out = tmp_path / "work" / "predictions" / "previous"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"previous": true}\n')
    monkeypatch.chdir(tmp_path / "work")
    return out


def assert_prediction_intact(out: Path) -> None:
    """Only the earlier prediction, untouched, and no staging folder beside it."""
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "summary.json": '{"previous": true}\n'
    }


@pytest.mark.parametrize("name", sorted(PREDICT_CASES))
def test_predict_refuses_hostile_scan_in_one_line(
    tmp_path: Path, previous_prediction: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args, named = PREDICT_CASES[name](tmp_path)
    model = str(tmp_path / "no-model-needed")  # the scan is read and refused first
    with pytest.raises(SystemExit) as exit_info:
        predict.main([*args, "--model", model, "--out", str(previous_prediction)])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_error_line(captured.err, named)
    assert_prediction_intact(previous_prediction)


@pytest.mark.parametrize("name", sorted(PREDICT_HUGE))
def test_predict_refuses_huge_header_without_allocating(
    tmp_path: Path, previous_prediction: Path, name: str
) -> None:
    args, named = PREDICT_HUGE[name](tmp_path)
    model = str(tmp_path / "no-model-needed")
    cmd = [sys.executable, "-m", "sarcoma_seg.predict", *args, "--model", model]
    code, stderr, peak_kib = run_measured(
        [*cmd, "--out", str(previous_prediction)], previous_prediction.parent.parent
    )
    assert code == 1, stderr
    assert_one_error_line(stderr, named)
    assert_prediction_intact(previous_prediction)
    assert peak_kib < MEMORY_LIMIT_KIB, f"{name}: peak RSS {peak_kib / 1024:.0f} MiB"


# --- the internal store ---------------------------------------------------------------------


def test_store_reader_refuses_links_out_of_the_store(tmp_path: Path) -> None:
    target = other_h5(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    volume = Volume(
        "STS_002",
        np.zeros((4, 8, 8), np.float32),
        np.zeros((4, 8, 8), np.uint8),
        None,
        (5.0, 5.0, 5.0),
        "test",
    )
    write_store(raw / STORE, [volume])
    with h5py.File(raw / STORE, "a") as h5:
        del h5["STS_002/ct"]
        h5["STS_002/ct"] = h5py.ExternalLink(str(target), "/secret")
    for read in (raw_patient_ids, lambda r: load_volumes(r, ["STS_002"])):
        with pytest.raises(SarcomaSegError, match=r"STS_002/ct \(patient STS_002\) is an external"):
            read(raw)
