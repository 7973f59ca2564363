"""The ONNX engine: export against Keras, predict without TensorFlow, the hostile-file refusals
of the loader, and `predict --cohort`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from sarcoma_seg.model import build_unet, save_unet
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, MODEL_FILE, write_model_config
from sarcoma_seg.onnx_model import ONNX_FILE, export_onnx
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing
from tests import dicom_data
from tests.test_predict import run_predict

ROOT = Path(__file__).resolve().parents[1]
INFERENCE = Inference(
    threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=0.5
)


def phantom(shape: tuple[int, int, int] = (6, 40, 48)) -> np.ndarray:
    """(slices, rows, cols) HU with an asymmetric bright block."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 8:30, 6:40] = 40.0
    hu[2:5, 10:16, 8:14] = 200.0
    return hu


def build_model_folder(folder: Path) -> Path:
    """An untrained U-Net saved as train saves it: weights, model.onnx and their hashes."""
    model = build_unet("resnet18", None, 3)
    section = save_unet(model, folder / MODEL_FILE, "resnet18")
    section = type(section)(
        **{**section.__dict__, "onnx_sha256": export_onnx(model, folder / ONNX_FILE)}
    )
    write_model_config(
        folder / MODEL_CONFIG_NAME, Preprocessing((-160.0, 240.0), 32, 3), INFERENCE, section
    )
    return folder


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build_model_folder in a module-wide folder."""
    return build_model_folder(tmp_path_factory.mktemp("onnx-model"))


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small NIfTI CT."""
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom().transpose(2, 1, 0), np.diag([0.9, 0.9, 3.0, 1.0])), path)
    return path


def test_both_engines_give_the_same_mask(
    onnx_dir: Path, ct_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    masks = {}
    for engine in ("onnx", "tensorflow"):
        out = tmp_path / engine
        args = [str(ct_file), "--model", str(onnx_dir), "--out", str(out), "--engine", engine]
        code, stdout, stderr = run_predict(args, capsys)
        assert code == 0, stderr
        assert json.loads(stdout)["engine"] == engine
        masks[engine] = np.asarray(nib.load(out / "mask.nii.gz").dataobj)
    assert np.array_equal(masks["onnx"], masks["tensorflow"])
    assert json.loads((tmp_path / "onnx" / "summary.json").read_text())["confidence"] >= 0


def test_onnx_predict_imports_neither_tensorflow_nor_segmentation_models(
    onnx_dir: Path, ct_file: Path, tmp_path: Path
) -> None:
    script = (
        "import sys\n"
        "from sarcoma_seg.predict import main\n"
        f"main([{str(ct_file)!r}, '--model', {str(onnx_dir)!r}, '--out', {str(tmp_path / 'o')!r},"
        " '--no-progress'])\n"
        "print(sorted(m for m in ('tensorflow', 'tf_keras', 'keras', 'segmentation_models')"
        " if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert json.loads(done.stdout.splitlines()[0])["engine"] == "onnx"


def tamper(folder: Path, change) -> None:
    """Rewrite the folder's model.onnx with change(proto) (or change(bytes) -> bytes) and, as an
    attacker who holds the whole folder would, its hash in the config too."""
    path = folder / ONNX_FILE
    data = path.read_bytes()
    if change.__code__.co_varnames[0] == "data":
        data = change(data)
    else:
        proto = onnx.load_from_string(data)
        change(proto)
        data = proto.SerializeToString()
    path.write_bytes(data)
    config = json.loads((folder / MODEL_CONFIG_NAME).read_text())
    import hashlib

    config["model"]["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / MODEL_CONFIG_NAME).write_text(json.dumps(config))


def external_data(proto) -> None:
    """The first initializer's bytes 'stored' in a file outside the model folder."""
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../etc/hostname"


def custom_domain(proto) -> None:
    """One node moved into a custom operator domain (a library the attacker hopes is loaded)."""
    proto.graph.node[0].domain = "com.attacker"


def unused_operator(proto) -> None:
    """A node whose operator no U-Net uses."""
    proto.graph.node.append(helper.make_node("Einsum", ["image"], ["spare"], equation="ij->ji"))


def other_opset(proto) -> None:
    """The default-domain opset changed from the exported one."""
    proto.opset_import[0].version = 9


def huge_tensor(proto) -> None:
    """A tensor that declares 4 TB in a file of a few MB (built by hand: onnx's helper checks)."""
    tensor = proto.graph.initializer.add()
    tensor.name, tensor.data_type, tensor.raw_data = "huge", TensorProto.FLOAT, b"\0" * 4
    tensor.dims.extend([10**6, 10**6])


def truncated(data: bytes) -> bytes:
    """The file cut in the middle."""
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (external_data, "is stored outside the file; refused"),
        (custom_domain, "is in the custom domain 'com.attacker'"),
        (unused_operator, "operator Einsum (node"),
        (other_opset, "opset ai.onnx 9 is not the exported 17"),
        (huge_tensor, "declares 4000000000000 bytes, more than the file's"),
        (truncated, "not a readable ONNX model"),
    ],
)
def test_hostile_onnx_is_one_line_exit_1_and_no_output(
    change, message: str, onnx_dir: Path, ct_file: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(onnx_dir, folder)
    tamper(folder, change)
    out = tmp_path / "out"
    code, stdout, stderr = run_predict(
        [str(ct_file), "--model", str(folder), "--out", str(out)], capsys
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not out.exists()


def test_a_changed_onnx_file_without_its_hash_is_refused(
    onnx_dir: Path, ct_file: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(onnx_dir, folder)
    (folder / ONNX_FILE).write_bytes((folder / ONNX_FILE).read_bytes()[:-1] + b"\1")
    code, _, stderr = run_predict(
        [str(ct_file), "--model", str(folder), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 1 and "SHA-256 differs from onnx_sha256" in stderr


def nifti_patient(root: Path, pid: str, shift: int) -> None:
    """<root>/<pid>/CT_image.nii.gz + CT_mask.nii.gz, the IBSI layout."""
    folder = root / pid
    folder.mkdir(parents=True)
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    hu = np.roll(phantom(), shift, axis=2)
    mask = (hu > 100).astype(np.uint8)
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), affine), folder / "CT_image.nii.gz")
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), affine), folder / "CT_mask.nii.gz")


def test_cohort_segments_each_patient_skips_a_bad_one_and_resumes(
    onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cohort = tmp_path / "cohort"
    nifti_patient(cohort, "P1", 0)
    nifti_patient(cohort, "P2", 4)
    (cohort / "BAD").mkdir()
    (cohort / "BAD" / "CT_image.nii.gz").write_bytes(b"not a NIfTI")
    out = tmp_path / "out"
    args = ["--cohort", str(cohort), "--model", str(onnx_dir), "--out", str(out)]
    code, stdout, stderr = run_predict(args, capsys)
    assert code == 1
    assert "error: patient BAD: " in stderr
    assert stderr.strip().splitlines()[-1] == "error: 1 patient(s) skipped: BAD"
    rows = (out / "cohort.csv").read_text().splitlines()
    assert rows[0] == "patient,voxels,volume_cm3,seconds,dice_3d,confidence,needs_review"
    assert [r.split(",")[0] for r in rows[1:]] == ["P1", "P2"]
    for pid in ("P1", "P2"):
        summary = json.loads((out / pid / "summary.json").read_text())
        mask = np.asarray(nib.load(out / pid / "mask.nii.gz").dataobj).transpose(2, 1, 0)
        truth = np.asarray(nib.load(cohort / pid / "CT_mask.nii.gz").dataobj).transpose(2, 1, 0)
        expected = 2 * (mask & truth).sum() / (mask.sum() + truth.sum() + 1e-9)
        assert np.isclose(summary["dice_3d"], expected, atol=1e-4)
    before = (out / "P1" / "summary.json").stat().st_mtime_ns
    shutil.rmtree(cohort / "BAD")
    code, _, stderr = run_predict(args, capsys)
    assert code == 0, stderr
    assert (out / "P1" / "summary.json").stat().st_mtime_ns == before  # done: not redone


def test_cohort_of_a_dicom_tree_writes_rtstructs_and_scores_the_rtstruct(
    onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tree = tmp_path / "tree"
    dicom_data.write_patient(tree, "D1")
    dicom_data.write_ct(tree / "D2" / "CT" / "image", "D2")  # no RTSTRUCT: no Dice
    out = tmp_path / "out"
    code, _, stderr = run_predict(
        ["--cohort", str(tree), "--model", str(onnx_dir), "--out", str(out)], capsys
    )
    assert code == 0, stderr
    rows = [line.split(",") for line in (out / "cohort.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["D1", "D2"]
    assert rows[0][4] != "" and rows[1][4] == ""
    assert (out / "D1" / "rtstruct.dcm").is_file()


def test_cohort_and_input_are_exclusive(capsys: pytest.CaptureFixture) -> None:
    code, _, stderr = run_predict(["--model", "m"], capsys)
    assert code == 2 and "give one input, or --cohort FOLDER" in stderr
