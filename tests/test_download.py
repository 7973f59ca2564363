"""The download stage: data/raw/ with a manifest that pins the files, and one-line errors."""

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sarcoma_seg.errors import SarcomaSegError
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[1]
SHAPE = [12, 48, 48]


def write_params(directory: Path, source: str = "synthetic", shape: object = SHAPE) -> None:
    """The tiny params.yaml (checked whole) with the download stage's settings."""
    params = tiny_params()
    params["base"]["seed"] = 11
    params["data"].update(source=source, synthetic={"n_patients": 2, "shape": shape})
    (directory / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def download(monkeypatch: pytest.MonkeyPatch):
    """stages.download; `stages` is not an installed package, so ROOT goes on sys.path."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("stages.download")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp project dir as the current directory, with a synthetic params.yaml."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    return tmp_path


def read_manifest(project: Path) -> dict:
    """data/raw/manifest.json as a dict."""
    return json.loads((project / "data" / "raw" / "manifest.json").read_text())


def test_main_writes_files_and_a_matching_manifest(
    download, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    download.main()
    raw = project / "data" / "raw"
    manifest = read_manifest(project)
    names = [entry["name"] for entry in manifest["files"]]
    assert names == ["lab_petct_vox_5.00mm.h5", "study_list.csv"]
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json", "source", "volumes.h5"]
    assert [p["id"] for p in manifest["patients"]] == ["SYN_001", "SYN_002"]
    assert manifest["patients"][0]["spacing_mm"] == [5.0, 5.0, 5.0]
    pairs = hashlib.sha256()
    for entry in manifest["files"]:
        data = (raw / "source" / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        pairs.update(f"{entry['name']}\0{entry['sha256']}\n".encode())
    assert manifest["digest"] == pairs.hexdigest()
    assert manifest["source"] == "synthetic"
    assert manifest["dataset"] == "synthetic-phantom"
    assert manifest["version"]["seed"] == 11
    assert manifest["version"]["generator"] == {"n_patients": 2, "shape": SHAPE}
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert "source=synthetic" in out and manifest["digest"] in out


def test_rerun_is_byte_identical_and_leaves_no_temp_dirs(download, project: Path) -> None:
    download.main()
    first = (project / "data" / "raw" / "manifest.json").read_bytes()
    download.main()
    assert (project / "data" / "raw" / "manifest.json").read_bytes() == first
    assert [p.name for p in (project / "data").iterdir()] == ["raw"]


def test_unknown_source_names_param_and_creates_nothing(download, project: Path) -> None:
    write_params(project, source="ftp")
    with pytest.raises(SarcomaSegError) as excinfo:
        download.main()
    message = str(excinfo.value)
    assert "data.source" in message and "'ftp'" in message
    assert "synthetic" in message and "kaggle" in message
    assert not (project / "data" / "raw").exists()


def test_failed_fetch_keeps_the_previous_raw_data(download, project: Path) -> None:
    download.main()
    before = read_manifest(project)
    write_params(project, shape=[4, 48, 48])
    with pytest.raises(SarcomaSegError, match=r"data\.synthetic\.shape"):
        download.main()
    assert read_manifest(project) == before
    assert [p.name for p in (project / "data").iterdir()] == ["raw"]


def test_missing_seed_is_a_one_line_error(download, project: Path) -> None:
    params = tiny_params()
    del params["base"]["seed"]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SarcomaSegError, match=r"params\.yaml: base\.seed: missing key"):
        download.main()


def run_stage(cwd: Path) -> subprocess.CompletedProcess:
    """python -m stages.download in cwd, with the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(PYTHONPATH=str(ROOT), HOME=str(cwd))
    return subprocess.run(
        [sys.executable, "-m", "stages.download"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_source_exits_nonzero_with_one_error_line(tmp_path: Path) -> None:
    write_params(tmp_path, source="ftp")
    result = run_stage(tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "data.source" in lines[0]
    assert not (tmp_path / "data" / "raw").exists()


def test_cli_kaggle_without_credentials_points_offline(tmp_path: Path) -> None:
    write_params(tmp_path, source="kaggle")
    result = run_stage(tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "data.source=synthetic" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "data" / "raw").exists()
