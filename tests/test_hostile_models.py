"""Hostile model folders and interrupted stages: a model file is data, never code. A Lambda
layer's stored Python must not run in predict, evaluate or the pyfunc; damaged or tampered
weights and configs stop with exactly one `error:` line, exit 1 and nothing written; a failed or
killed stage keeps the last good outputs and leaves no staging folder."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf
import yaml

from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.model import build_unet, save_unet, seed_everything
from sarcoma_seg.model_folder import MODEL_CONFIG_NAME, MODEL_FILE, write_model_config
from sarcoma_seg.predict import main as predict_main
from sarcoma_seg.serving import UnetSegmenter
from sarcoma_seg.settings import Inference
from sarcoma_seg.transforms import Preprocessing
from tests.conftest import ROOT, copy_project, run, tiny_params
from tests.test_predict import phantom_hu
from tests.test_readers import ibsi_patient

PRE = Preprocessing((-160.0, 240.0), 32, 3)
INFERENCE = Inference(
    threshold=0.5, postprocess="none", tta_flip=False, z_sigma=0.0, review_below=None
)
MARK = "lambda_ran.txt"  # the file the hostile Lambda layer writes when its code runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained model folder (32 px, one step), saved as the train stage saves it."""
    folder = tmp_path_factory.mktemp("trained")
    seed_everything(0)
    model = build_unet("resnet18", None, PRE.input_channels)
    model.compile("adam", "binary_crossentropy")
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    model.fit(images, (images[..., :1] > 0.7).astype(np.float32), batch_size=4, verbose=0)
    section = save_unet(model, folder / MODEL_FILE, "resnet18")
    write_model_config(folder / MODEL_CONFIG_NAME, PRE, INFERENCE, section)
    return folder


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a whole-model .h5 whose Lambda layer writes MARK, MARK's path); the fixture proves that
    Keras' own loader runs the stored code, then removes MARK."""
    root = tmp_path_factory.mktemp("lambda")
    mark = root / MARK
    hostile = eval(f"lambda x: (open({str(mark)!r}, 'w').write('ran'), x)[1]")  # noqa: S307
    image = tf.keras.Input((None, None, 3))
    model = tf.keras.Model(image, tf.keras.layers.Lambda(hostile)(image))
    path = root / "lambda.h5"
    model.save(path, save_format="h5")
    mark.unlink(missing_ok=True)  # building the model called it once
    tf.keras.models.load_model(path, compile=False)  # what load_unet did before
    assert mark.exists(), "the Lambda file should run its code under tf.keras load_model"
    mark.unlink()
    return path, mark


@pytest.fixture
def folder(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained model folder to damage."""
    return Path(shutil.copytree(trained, tmp_path / "model"))


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid CT (NIfTI) to run predict on."""
    path = tmp_path_factory.mktemp("scan") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(phantom_hu(), np.eye(4)), path)
    return path


def edit_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the folder's model_config.json with change applied."""
    config = json.loads((folder / MODEL_CONFIG_NAME).read_text())
    change(config)
    (folder / MODEL_CONFIG_NAME).write_text(json.dumps(config))


def restamp(folder: Path) -> None:
    """Store the weights file's current SHA-256, as an attacker who edits both would."""
    sha = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    edit_config(folder, lambda c: c["model"].update(weights_sha256=sha))


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, exit_code: int = 1) -> str:
    """The single stderr line of a refused command, after checking the exit code and that
    nothing reached stdout; printed so that -rA lists every message."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == exit_code, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert captured.out == ""
    print(lines[0])
    return lines[0]


def predict(args: list[str]) -> int:
    """Run the predict command in this process; its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--no-progress", *args])
    return int(exit_info.value.code)


def refused_by_predict(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    """predict on the folder: one line, exit 1, no output folder, the Lambda never ran."""
    out = tmp_path / "out"
    code = predict([str(scan), "--model", str(folder), "--out", str(out)])
    line = one_error_line(capsys, code)
    assert not out.exists() and not list(tmp_path.glob(".out-*"))
    return line


# --- the Lambda model: its code must never run -------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("as-is", "SHA-256 differs from weights_sha256"),
        ("restamped", "weights .* missing; the file does not fit its model section"),
        ("old-folder", "no model section, .* retrain it"),
    ],
)
def test_a_lambda_model_does_not_run_in_predict(
    folder: Path,
    lambda_file: tuple[Path, Path],
    scan: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
    expected: str,
) -> None:
    path, mark = lambda_file
    shutil.copy(path, folder / MODEL_FILE)
    if how == "restamped":
        restamp(folder)
    if how == "old-folder":
        edit_config(folder, lambda c: c.pop("model"))
    line = refused_by_predict(folder, scan, tmp_path, capsys)
    assert f"{folder / MODEL_FILE}" in line or f"{folder / MODEL_CONFIG_NAME}" in line
    assert re.search(expected, line), line
    assert not mark.exists()


def test_a_lambda_model_does_not_run_in_evaluate_or_the_pyfunc(
    folder: Path,
    lambda_file: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stages import evaluate

    path, mark = lambda_file
    shutil.copy(path, folder / MODEL_FILE)
    restamp(folder)
    project = tmp_path / "project"
    shutil.copytree(folder, project / "data" / "model")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main)
    line = one_error_line(capsys, int(exit_info.value.code))
    assert line.startswith(f"error: data/model/{MODEL_FILE}: weights ")
    assert sorted(p.name for p in project.iterdir()) == ["data", "params.yaml"]
    context = SimpleNamespace(
        artifacts={
            "keras_model": str(folder / MODEL_FILE),
            "model_config": str(folder / MODEL_CONFIG_NAME),
        }
    )
    with pytest.raises(SarcomaSegError, match="the file does not fit its model section"):
        UnetSegmenter().load_context(context)
    assert not mark.exists()


# --- damaged weights files ---------------------------------------------------------------------


def first_dataset(h5: h5py.File) -> str:
    """The name of the first weights dataset, in sorted order."""
    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)[0]


def rewrite(change: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    """A damage that edits the weights file with h5py."""

    def damage(path: Path) -> None:
        with h5py.File(path, "r+") as h5:
            change(h5)

    return damage


def reshape(h5: h5py.File) -> None:
    """One dataset replaced by one of another shape."""
    name = first_dataset(h5)
    del h5[name]
    h5.create_dataset(name, data=np.zeros((7,), np.float32))


def retype(h5: h5py.File) -> None:
    """One dataset replaced by float64 of the same shape."""
    name = first_dataset(h5)
    data = h5[name][()]
    del h5[name]
    h5.create_dataset(name, data=data.astype(np.float64))


def huge(h5: h5py.File) -> None:
    """A dataset declaring 2^40 floats (4 TiB) in a file of a few bytes more."""
    h5.create_dataset("evil/huge", shape=(1 << 40,), dtype=np.float32, chunks=(1024,))


def reorder(h5: h5py.File) -> None:
    """The layer list reversed: Keras would load each layer's weights into another."""
    h5.attrs["layer_names"] = h5.attrs["layer_names"][::-1]


def truncate(path: Path) -> None:
    """The file cut in half."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (truncate, "not a readable HDF5 weights file"),
    "zero-bytes": (lambda p: p.write_bytes(b""), "not a readable HDF5 weights file"),
    "random-bytes": (
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
        "not a readable HDF5 weights file",
    ),
    "text": (lambda p: p.write_text("print('hello')\n"), "not a readable HDF5 weights file"),
    "wrong-shape": (rewrite(reshape), r"weights \S+ are \(7,\) float32, the model needs"),
    "wrong-dtype": (rewrite(retype), r"weights \S+ are .* float64, the model needs .* float32"),
    "missing-dataset": (rewrite(lambda h5: h5.__delitem__(first_dataset(h5))), "missing"),
    "extra-dataset": (
        rewrite(lambda h5: h5.create_dataset("evil/extra", data=np.zeros(3))),
        "unexpected dataset evil/extra",
    ),
    "external-link": (
        rewrite(lambda h5: h5.__setitem__("evil", h5py.ExternalLink("/etc/other.h5", "/x"))),
        "evil is an external link to /etc/other.h5:/x; refusing it",
    ),
    "soft-link": (
        rewrite(lambda h5: h5.__setitem__("evil", h5py.SoftLink("/evil"))),
        "evil is a soft link to /evil; refusing it",
    ),
    "huge-dataset": (rewrite(huge), "dataset evil/huge declares shape"),
    "layers-reordered": (rewrite(reorder), "layer_names lists the layers out of the model's order"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_weights_file_is_one_line(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    change, expected = DAMAGES[damage]
    change(folder / MODEL_FILE)
    restamp(folder)  # the hash matches: the file's structure itself must be refused
    line = refused_by_predict(folder, scan, tmp_path, capsys)
    assert line.startswith(f"error: {folder / MODEL_FILE}: "), line
    assert re.search(expected, line), line


def test_a_changed_weights_file_fails_its_hash(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))
    line = refused_by_predict(folder, scan, tmp_path, capsys)
    assert line == (
        f"error: {folder / MODEL_FILE}: SHA-256 differs from weights_sha256 in "
        f"{folder / MODEL_CONFIG_NAME}; the file was changed or damaged since training"
    )


# --- tampered model_config.json ----------------------------------------------------------------

CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown-model-key": (
        lambda c: c["model"].update(code="import os"),
        "model.code: unknown key",
    ),
    "members-too-many": (lambda c: c["model"].update(members=100000), "model.members=100000"),
    "channels-too-many": (lambda c: c["model"].update(channels=4096), "model.channels=4096"),
    "backbone-unknown": (
        lambda c: c["model"].update(backbone="os.system"),
        "model.backbone='os.system' is not allowed; choose one of: ",
    ),
    "sha-not-hex": (
        lambda c: c["model"].update(weights_sha256="zz"),
        "model.weights_sha256='zz' is not a SHA-256 hex digest",
    ),
    "no-model-section": (lambda c: c.pop("model"), "no model section, so model.h5 is an old"),
}


@pytest.mark.parametrize("tamper", sorted(CONFIGS))
def test_a_tampered_config_is_one_line(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    change, expected = CONFIGS[tamper]
    edit_config(folder, change)
    line = refused_by_predict(folder, scan, tmp_path, capsys)
    assert line.startswith(f"error: {folder / MODEL_CONFIG_NAME}: "), line
    assert expected in line, line


def test_a_config_that_is_not_json_is_one_line(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / MODEL_CONFIG_NAME).write_text('{"hu_window": [-160, 240], ')
    line = refused_by_predict(folder, scan, tmp_path, capsys)
    assert line.startswith(f"error: {folder / MODEL_CONFIG_NAME}: cannot read the stored config (")


# --- predict's arguments and output ------------------------------------------------------------


def test_out_naming_a_file_is_refused_before_the_model_is_read(
    folder: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / MODEL_FILE).write_bytes(b"")  # were the model read first, this would be the error
    out = tmp_path / "result.txt"
    out.write_text("keep me\n")
    code = predict([str(scan), "--model", str(folder), "--out", str(out)])
    line = one_error_line(capsys, code)
    assert line == f"error: --out {out}: is an existing file; give a folder"
    assert out.read_text() == "keep me\n"


def test_a_huge_batch_size_is_refused(
    trained: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = predict(
        [str(scan), "--model", str(trained), "--out", str(out), "--batch-size", "100000000"]
    )
    line = one_error_line(capsys, code)
    assert line == "error: --batch-size=100000000 is not allowed; it must be 1 to 512"
    assert not out.exists()


def test_the_trained_folder_predicts_and_the_pyfunc_refuses_nan(
    trained: Path, scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predict_main(
        ["--no-progress", str(scan), "--model", str(trained), "--out", str(tmp_path / "o")]
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["input"] == str(scan)  # stdout is the JSON alone
    context = SimpleNamespace(
        artifacts={
            "keras_model": str(trained / MODEL_FILE),
            "preprocessing": str(trained / MODEL_CONFIG_NAME),  # the key older pyfuncs logged
        }
    )
    wrapper = UnetSegmenter()
    wrapper.load_context(context)
    hu = phantom_hu()
    hu[1, 2, 3] = np.nan
    with pytest.raises(SarcomaSegError, match=r"^model input: CT holds NaN or infinite voxels$"):
        wrapper.predict(None, hu)
    hu[1, 2, 3] = np.inf
    with pytest.raises(SarcomaSegError, match=r"^model input: CT holds NaN or infinite voxels$"):
        wrapper.predict(None, hu)


# --- end to end: a real pipe, a real dvc repro, a real SIGTERM ---------------------------------


def subprocess_env() -> dict[str, str]:
    """This checkout's code first, whatever is installed."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_predict_output_pipes_into_json_tool(trained: Path, scan: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sarcoma_seg.predict", str(scan), "--model", str(trained)]
    command += ["--out", str(tmp_path / "out")]
    producer = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=subprocess_env()
    )
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], stdin=producer.stdout, capture_output=True, text=True
    )
    assert producer.wait() == 0 and tool.returncode == 0, tool.stderr
    assert json.loads(tool.stdout)["input"] == str(scan)


def write_tiny_params(project: Path, **data: Any) -> None:
    """Tiny params with data overrides, as project/params.yaml."""
    params = tiny_params()
    params["data"].update(data)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_a_failed_dvc_repro_keeps_the_last_good_raw_data(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    write_tiny_params(repo)
    run(["dvc", "repro", "download"], repo)
    manifest = (repo / "data" / "raw" / "manifest.json").read_bytes()
    ibsi_patient(tmp_path / "in", "STS_001")
    (ibsi_patient(tmp_path / "in", "STS_004") / "CT_image.nii.gz").write_bytes(b"")
    write_tiny_params(repo, source="nifti", path=str(tmp_path / "in"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        ["dvc", "repro", "download"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "STS_004" in errors[0] and "Traceback" not in done.stderr, (
        done.stderr
    )
    print(errors[0])
    assert (repo / "data" / "raw" / "manifest.json").read_bytes() == manifest
    assert not list((repo / "data").glob(".raw.*"))


def test_stale_staging_leftovers_are_removed_at_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages import download

    (tmp_path / "data" / ".raw.new-killed" / "source").mkdir(parents=True)
    (tmp_path / "data" / ".raw.old-killed").mkdir()
    write_tiny_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_cli(download.main)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


@pytest.mark.slow
def test_sigterm_during_a_stage_removes_its_staging_folder(tmp_path: Path) -> None:
    previous = tmp_path / "data" / "raw"
    previous.mkdir(parents=True)
    (previous / "manifest.json").write_text('{"previous": true}\n')
    # a synthetic source big enough to take seconds, small enough to stay light if it did finish
    write_tiny_params(tmp_path, synthetic={"n_patients": 100, "shape": [32, 128, 128]})
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.download"],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list((tmp_path / "data").glob(".raw.new-*")) and time.monotonic() < deadline:
        assert stage.poll() is None, stage.communicate()
        time.sleep(0.01)
    stage.send_signal(signal.SIGTERM)
    out, err = stage.communicate(timeout=60)
    assert stage.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]
    assert (previous / "manifest.json").read_text() == '{"previous": true}\n'


# --- the one runner ----------------------------------------------------------------------------


def test_run_cli_turns_anticipated_failures_into_one_line_and_keeps_bugs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "split.json"
    for failing, expected in (
        (lambda: json.loads(missing.read_text()), f"error: {missing}: No such file or directory"),
        (lambda: json.loads('{"test": '), "error: invalid JSON (Expecting value: line 1 column 10"),
        (lambda: h5py.File(tmp_path, "r"), "error: "),
    ):
        capsys.readouterr()  # the previous case's printed line
        with pytest.raises(SystemExit) as exit_info:
            run_cli(failing)
        assert one_error_line(capsys, int(exit_info.value.code)).startswith(expected)
    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_cli(lambda: {}["train"])
