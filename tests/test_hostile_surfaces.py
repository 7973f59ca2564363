"""The surfaces added last round, tried as a hostile user would (issue 30): DICOM trees with
hostile patient ids, ROI patterns, PET tags and pixel data; links that lead out of data.path;
model folders and URIs that lead elsewhere. Each is one `error:` line, exit 1, nothing written."""

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from sarcoma_seg.errors import SarcomaSegError, brief, run_cli
from sarcoma_seg.io import dicom
from sarcoma_seg.io.common import read_json
from stages import download
from tests import dicom_data
from tests.test_hostile_data import (
    assert_nothing_written,
    assert_one_error_line,
    project,  # noqa: F401  (the fixture)
    write_params,
)
from tests.test_onnx import build_model_folder, run_predict
from tests.test_readers import ibsi_patient


def dicom_case(root: Path, **data) -> dict:
    """The data section of a dicom source at root/in."""
    return {"source": "dicom", "path": str(root / "in"), **data}


def retag(folder: Path, keyword: str, value) -> None:
    """One tag rewritten in every DICOM file under folder."""
    for path in sorted(folder.rglob("*.dcm")):
        dicom_data.set_tag(path, keyword, value)


def hostile_id(value: str):
    """A patient whose PatientID is value in every file."""

    def build(root: Path) -> tuple[dict, tuple[str, ...]]:
        dicom_data.write_patient(root / "in", "STS_001")
        retag(root / "in", "PatientID", value)
        return dicom_case(root), ("patient id", "is not allowed")

    return build


def backtracking_roi(root: Path) -> tuple[dict, tuple[str, ...]]:
    """An ROI name that makes data.roi='(a|aa)+$' backtrack for minutes."""
    ct = dicom_data.write_ct(root / "in" / "ct", "STS_001")
    dicom_data.write_rtstruct(root / "in" / "rs.dcm", "STS_001", ct, names=("a" * 40 + "!",))
    return dicom_case(root, roi="(a|aa)+$"), ("rs.dcm", "took more than", "simpler pattern")


def bqml_pet(**drug_tags) -> callable:
    """A BQML PET whose radiopharmaceutical tags are drug_tags (F-18 otherwise)."""

    def build(root: Path) -> tuple[dict, tuple[str, ...]]:
        ct = dicom_data.write_patient(root / "in", "STS_001")
        drug = dicom_data.Dataset()
        drug.RadionuclideTotalDose = drug_tags.get("dose", 4e8)
        drug.RadionuclideHalfLife = drug_tags.get("half_life", 6588.0)
        drug.RadiopharmaceuticalStartTime = "100000.00"
        dicom_data.write_pet(
            root / "in" / "STS_001" / "PET", "STS_001", ct, units="BQML", PatientWeight=80.0,
            SeriesTime="114948.00",
            RadiopharmaceuticalInformationSequence=dicom_data.Sequence([drug]),
        )  # fmt: skip
        return dicom_case(root), ("PT000.dcm", drug_tags["named"])

    return build


def undecodable_pixels(root: Path) -> tuple[dict, tuple[str, ...]]:
    """One CT slice declared JPEG 2000 whose pixel data is garbage."""
    dicom_data.write_patient(root / "in", "STS_001")
    path = root / "in" / "STS_001" / "CT" / "image" / "CT002.dcm"
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
    ds.save_as(path, enforce_file_format=True)
    return dicom_case(root), ("CT002.dcm", "STS_001", "unreadable or truncated DICOM pixel data")


def linked_dicom_file(root: Path) -> tuple[dict, tuple[str, ...]]:
    """A DICOM file of the patient linked from outside data.path."""
    dicom_data.write_patient(root / "in", "STS_001")
    outside = root / "outside.dcm"
    slice_file = root / "in" / "STS_001" / "CT" / "image" / "CT001.dcm"
    shutil.move(slice_file, outside)
    slice_file.symlink_to(outside)
    return dicom_case(root), ("CT001.dcm", "outside data.path")


def linked_dicom_folder(root: Path) -> tuple[dict, tuple[str, ...]]:
    """A patient folder linked from outside data.path."""
    dicom_data.write_patient(root / "elsewhere", "STS_002")
    dicom_data.write_patient(root / "in", "STS_001")
    (root / "in" / "STS_002").symlink_to(root / "elsewhere" / "STS_002", target_is_directory=True)
    return dicom_case(root), ("STS_002", "outside data.path")


def linked_nifti_folder(root: Path) -> tuple[dict, tuple[str, ...]]:
    """A NIfTI patient folder linked from outside data.path."""
    ibsi_patient(root / "in", "STS_001")
    ibsi_patient(root / "elsewhere", "STS_004")
    (root / "in" / "STS_004").symlink_to(root / "elsewhere" / "STS_004", target_is_directory=True)
    return {"source": "nifti", "path": str(root / "in")}, ("STS_004", "outside data.path")


CASES = {
    "dicom-patient-id-traversal": hostile_id("../../evil"),
    "dicom-patient-id-slash": hostile_id("STS/004"),
    "dicom-patient-id-dot": hostile_id("."),
    "dicom-roi-backtracking": backtracking_roi,
    "dicom-bqml-half-life-1e-300": bqml_pet(half_life=1e-300, named="RadionuclideHalfLife"),
    "dicom-bqml-dose-1e308": bqml_pet(dose=1e308, named="SUV factor"),
    "dicom-undecodable-pixels": undecodable_pixels,
    "dicom-file-linked-from-outside": linked_dicom_file,
    "dicom-folder-linked-from-outside": linked_dicom_folder,
    "nifti-folder-linked-from-outside": linked_nifti_folder,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_tree_is_one_line_and_keeps_previous_data(
    project: Path,  # noqa: F811
    tmp_path: Path,
    name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, named = CASES[name](tmp_path)
    write_params(project, data)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(download.main)
    assert exit_info.value.code == 1
    assert_one_error_line(capsys.readouterr().err, named)
    assert_nothing_written(project)


def test_a_one_slice_ct_with_a_negative_thickness_is_refused(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.SliceThickness = -3.0
    with pytest.raises(SarcomaSegError, match="SliceThickness -3.0 is not a positive size"):
        dicom._thickness(ds, "CT000.dcm")
    assert dicom._thickness(pydicom.Dataset(), "CT000.dcm") == 1.0  # absent: 1 mm, documented


def test_json_files_are_bounded_and_named(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SarcomaSegError, match=r"deep\.json: invalid JSON \(nested too deeply\)"):
        read_json(deep)
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(200 << 20)  # 200 MB of zeros, sparse: never read whole
    with pytest.raises(SarcomaSegError, match=r"big\.json: more than 65536 bytes"):
        read_json(big, 64 << 10)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(SarcomaSegError, match=r"binary\.json: invalid JSON"):
        read_json(binary)


def test_a_long_error_line_keeps_both_ends() -> None:
    line = "data.path='" + "x" * 100_000 + "': no such folder"
    short = brief(line)
    assert len(short) < 450 and short.startswith("data.path='xxx") and short.endswith("folder")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved (untrained) model folder, as tests/test_onnx.py builds it."""
    return build_model_folder(tmp_path_factory.mktemp("model"))


def test_model_folder_links_and_uris_that_lead_elsewhere_are_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ct = tmp_path / "ct.nii.gz"
    ibsi_patient(tmp_path / "in", "STS_001")
    shutil.copy(tmp_path / "in" / "STS_001" / "CT_image.nii.gz", ct)
    linked = tmp_path / "linked"
    linked.mkdir()
    for item in model_dir.iterdir():
        shutil.copy(item, linked / item.name)
    os.replace(linked / "model.onnx", tmp_path / "model.onnx")
    (linked / "model.onnx").symlink_to(tmp_path / "model.onnx")
    code, _, stderr = run_predict(
        [str(ct), "--model", str(linked), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "outside the model folder" in stderr and not (tmp_path / "o").exists()
    uri = "runs:/0123456789abcdef/model/../../../etc"
    code, _, stderr = run_predict([str(ct), "--model", uri, "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "'..' is not allowed in a model URI" in stderr


def test_a_nested_model_config_is_one_line(model_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "model_config.json").write_text("[" * 20_000 + "]" * 20_000)  # 40 kB, too deep
    ibsi_patient(tmp_path / "in", "STS_001")
    ct = tmp_path / "in" / "STS_001" / "CT_image.nii.gz"
    code, _, stderr = run_predict(
        [str(ct), "--model", str(folder), "--out", str(tmp_path / "o")], capsys
    )
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "nested too deeply" in lines[0]


def test_a_bad_out_is_refused_before_inference_and_one_out_has_one_writer(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import fcntl
    import hashlib
    import tempfile

    ibsi_patient(tmp_path / "in", "STS_001")
    ct = tmp_path / "in" / "STS_001" / "CT_image.nii.gz"
    (tmp_path / "a-file").write_text("x")
    code, _, stderr = run_predict(
        [str(ct), "--model", str(model_dir), "--out", str(tmp_path / "a-file" / "o")], capsys
    )
    assert code == 1 and "a-file is a file, not a folder" in stderr and "segmenting" not in stderr
    out = tmp_path / "busy"
    key = hashlib.sha256(str(out.absolute()).encode()).hexdigest()[:24]
    with (Path(tempfile.gettempdir()) / f"sarcoma-seg-predict-{key}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another predict holds this --out
        code, _, stderr = run_predict(
            [str(ct), "--model", str(model_dir), "--out", str(out)], capsys
        )
    assert code == 1 and "another predict is writing it" in stderr and not out.exists()


class StubModel:
    """What resumable() asks of a model: its weights' shapes."""

    def get_weights(self) -> list[np.ndarray]:
        return [np.zeros((3, 3)), np.zeros(3)]


def saved_state(root: Path, epoch, weights=None):
    """A checkpoint folder whose state says epoch, with weights (default: StubModel's)."""
    from sarcoma_seg.checkpoint import open_checkpoint

    ckpt = open_checkpoint(root, "k")
    meta = {"epoch": epoch, "member": 0, "stopped": False, "history": {"loss": [1.0]}}
    ckpt.save(meta, weights if weights is not None else StubModel().get_weights(), [])
    return ckpt


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:40]), "unreadable"),
        (lambda p: p.write_bytes(b"not a zip at all"), "unreadable"),
        (lambda p: np.savez(p.open("wb"), meta=np.array("[1, 2]")), "meta lacks"),
    ],
)
def test_a_damaged_checkpoint_is_discarded_and_training_starts_afresh(
    tmp_path: Path, damage, warning: str, capsys: pytest.CaptureFixture
) -> None:
    from sarcoma_seg.training import resumable

    ckpt = saved_state(tmp_path, 1)
    damage(ckpt.folder / "state.npz")
    assert resumable(ckpt, StubModel(), 3) is None
    assert warning in capsys.readouterr().err and not (ckpt.folder / "state.npz").exists()


@pytest.mark.parametrize(
    ("epoch", "weights", "warning"),
    [
        (1_000_000_000, None, "epoch 1000000000 is not one of train.epochs=3"),
        ("2", None, "epoch 2 is not one of"),
        (1, [np.zeros((4, 4)), np.zeros(3)], "weights do not fit this model"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_discarded(
    tmp_path: Path, epoch, weights, warning: str, capsys: pytest.CaptureFixture
) -> None:
    from sarcoma_seg.training import resumable

    ckpt = saved_state(tmp_path, epoch, weights)
    assert resumable(ckpt, StubModel(), 3) is None
    assert warning in capsys.readouterr().err
    assert resumable(saved_state(tmp_path / "ok", 2), StubModel(), 3)["epoch"] == 2


def test_bad_outbox_lines_are_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from sarcoma_seg.runlog import Outbox

    outbox = Outbox(tmp_path, "run")
    outbox.add({"loss": 1.0}, 0)
    with outbox.path.open("ab") as f:
        f.write(b'{"step": 0}\n\xff\xfe not utf-8\n{"step": 1, "metrics": {"loss": "x"}}\n')
    outbox.add({"loss": 0.5}, 1)
    assert [item["step"] for item in outbox.pending()] == [0, 1]
    assert capsys.readouterr().err.count("dropped") == 3


def test_stale_checkpoints_are_pruned_to_the_budget_and_a_running_one_is_kept(
    tmp_path: Path,
) -> None:
    import fcntl
    import time

    from sarcoma_seg.checkpoint import FOLDER, folder_bytes, prune

    root = tmp_path / ".checkpoints"
    for i in range(6):  # six queued experiments' leftovers, 100 kB each, oldest first
        folder = root / f"train-{i}"
        folder.mkdir(parents=True)
        (folder / "state.npz").write_bytes(b"\0" * 100_000)
        os.utime(folder / "state.npz", (time.time() - 600 + i, time.time() - 600 + i))
    current = root / "train-current"
    current.mkdir()
    with (root / "train-0" / "lock").open("a") as running:
        fcntl.flock(running, fcntl.LOCK_EX)  # the oldest is a training still running
        removed = prune(tmp_path, current, 250_000)
    # newest kept while they fit (5, 4); 3, 2, 1 removed; 0 is running: kept whatever its age
    assert {f.name for f, _ in removed} == {"train-1", "train-2", "train-3"}
    left = [f for f in (tmp_path / FOLDER).glob("train-*") if f != current]
    assert {f.name for f in left} == {"train-0", "train-4", "train-5"}
    stale = sum(folder_bytes(f) for f in left if f.name != "train-0")
    assert stale <= 250_000 and current.is_dir()


def test_data_source_and_path_beside_data_sources_are_refused_not_ignored(
    project: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ibsi_patient(tmp_path / "in", "STS_001")
    sources = [{"source": "nifti", "path": str(tmp_path / "in")}]
    write_params(project, {"sources": sources, "source": "dicom", "path": "x" * 100_000})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(download.main)
    assert exit_info.value.code == 1
    line = assert_one_error_line(capsys.readouterr().err, ("data.sources is set", "not read"))
    assert len(line) < 500  # a 100 kB value is not echoed whole
    assert_nothing_written(project)


def test_too_many_contours_are_refused_before_they_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicom, "MAX_CONTOURS", 2)  # the default outline has more contours
    dicom_data.write_patient(tmp_path / "in", "STS_001")
    with pytest.raises(
        SarcomaSegError, match=r"RS\.dcm \(patient STS_001\): the ROI holds \d+ contours"
    ):
        dicom.read_dicom(tmp_path / "in", "GTV")


def fake_stack_state(folder: Path, **changes) -> Path:
    """A state folder whose state.json looks like `up`'s, with changes."""
    import tempfile

    from sarcoma_seg import stack

    folder.mkdir(parents=True)
    pg_dir = Path(tempfile.mkdtemp(prefix=stack.PG_PREFIX))
    state = {
        "state_dir": str(folder), "pg_dir": str(pg_dir), "pg_bin": str(stack.postgres_bin()),
        "pg_port": 1, "s3_port": 2, "mlflow_port": 3, "pg_password": "p", "aws_key_id": "k",
        "aws_secret": "s", "admin_password": "a", "pids": {},
    } | changes  # fmt: skip
    (folder / "state.json").write_text(json.dumps(state))
    return pg_dir


def test_stack_down_refuses_a_tampered_state_and_spares_unrelated_processes(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from sarcoma_seg import stack

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    made = [fake_stack_state(tmp_path / "s1", pg_dir=str(precious))]
    with pytest.raises(SarcomaSegError, match=r"state\.json: pg_dir is not what `up` writes"):
        stack.stop(stack.load_state(tmp_path / "s1"))
    made.append(fake_stack_state(tmp_path / "s2", state_dir=str(precious)))
    with pytest.raises(SarcomaSegError, match=r"state_dir is not what `up` writes"):
        stack.load_state(tmp_path / "s2")
    assert (precious / "keep.txt").read_text() == "mine"
    # a stale state whose pid now belongs to another process group: that one is not killed
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        pg_dir = fake_stack_state(tmp_path / "s3", pids={"mlflow": other.pid, "s3": other.pid})
        stack.stop(stack.load_state(tmp_path / "s3"))
        assert other.poll() is None  # still running
        assert not pg_dir.exists() and not (tmp_path / "s3").exists()  # the stack's own folders
    finally:
        other.kill()
        other.wait()
        for folder in made:  # the temporary folders the refused states were never allowed
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("raised", "status"),
    [(None, "FINISHED"), ("terminated", "KILLED"), ("error", "FAILED")],
)
def test_a_reopened_run_ends_killed_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raised, status: str
) -> None:
    import mlflow

    from sarcoma_seg.errors import Terminated
    from sarcoma_seg.runlog import reopened

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("reopened")  # not an experiment id another test's store left active
    with mlflow.start_run() as run:
        pass  # the training's run, FINISHED
    problem = {"terminated": Terminated(15), "error": ValueError("x")}.get(raised)
    expected = pytest.raises(type(problem)) if problem else contextlib.nullcontext()
    with expected, reopened(run.info.run_id):
        mlflow.log_metric("test_dice_3d_mean", 0.5)
        if problem:
            raise problem  # SIGTERM arrives while evaluate logs
    assert mlflow.get_run(run.info.run_id).info.status == status
