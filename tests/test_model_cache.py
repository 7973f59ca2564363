"""The local cache of registry models: fetched once per (store, name, version), checked by
SHA-256 on reuse, refetched when tampered with; aliases and runs:/ are not cached."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sarcoma_seg.model_cache import CACHE_ENV, cache_key, cached_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The cache in tmp_path; the list records every fetch made."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return []


def fake_fetch(calls: list[Path]):
    """A fetch that writes model.h5 and model_config.json into a subfolder, like MLflow."""

    def fetch(dst: Path) -> Path:
        calls.append(dst)
        folder = dst / "artifacts"
        folder.mkdir(parents=True)
        (folder / "model.h5").write_bytes(b"weights")
        (folder / "model_config.json").write_text("{}")
        return folder

    return fetch


def test_only_fixed_registry_versions_are_cached() -> None:
    assert cache_key("models:/sarcoma-seg/3", "sqlite:///a.db").endswith("/sarcoma-seg/3")
    assert cache_key("models:/sarcoma-seg/3", "sqlite:///a.db") != cache_key(
        "models:/sarcoma-seg/3", "sqlite:///b.db"
    )
    for uri in ("models:/sarcoma-seg/latest", "models:/sarcoma-seg@champion", "runs:/abc/model"):
        assert cache_key(uri, "sqlite:///a.db") is None


def test_second_call_reuses_the_verified_copy_and_a_tampered_one_is_refetched(
    fetches: list[Path],
) -> None:
    fetch = fake_fetch(fetches)
    first = cached_model("models:/m/1", "store", fetch)
    assert (first / "model.h5").read_bytes() == b"weights" and len(fetches) == 1
    assert cached_model("models:/m/1", "store", fetch) == first and len(fetches) == 1
    (first / "model.h5").write_bytes(b"other weights")
    again = cached_model("models:/m/1", "store", fetch)
    assert (again / "model.h5").read_bytes() == b"weights" and len(fetches) == 2
    assert not any(p.name.startswith(".fetch-") for p in again.parent.iterdir())
    assert cached_model("models:/m/latest", "store", fetch) is None


def test_a_failed_fetch_leaves_nothing_cached(fetches: list[Path]) -> None:
    def broken(dst: Path) -> Path:
        raise OSError("network down")

    with pytest.raises(OSError):
        cached_model("models:/m/2", "store", broken)
    assert cached_model("models:/m/2", "store", fake_fetch(fetches)) is not None
    assert len(fetches) == 1


PROBE = """
import sys
from pathlib import Path
from sarcoma_seg.errors import run_cli
from sarcoma_seg.predict import model_folder
run_cli(lambda: print(model_folder(sys.argv[1], Path(sys.argv[2]))))
print("mlflow" in sys.modules, file=sys.stderr)
"""


def probe(uri: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """predict's model_folder(uri) in a fresh interpreter run in tmp_path: the folder on stdout,
    then on stderr whether MLflow was imported."""
    env = os.environ | {CACHE_ENV: str(tmp_path / "cache"), "MLFLOW_TRACKING_URI": store(tmp_path)}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever the installed package is
    return subprocess.run(
        [sys.executable, "-c", PROBE, uri, str(tmp_path / "scratch")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def store(tmp_path: Path) -> str:
    """An empty local store: opened only when the cache cannot answer."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_a_cached_version_is_served_without_importing_mlflow_and_a_tampered_one_is_not(
    fetches: list[Path], tmp_path: Path
) -> None:
    cached = cached_model("models:/m/4", store(tmp_path), fake_fetch(fetches))
    done = probe("models:/m/4", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == cached
    assert done.stderr.strip().splitlines()[-1] == "False"  # served from the cache alone
    assert not (tmp_path / "mlflow.db").exists()  # the store was never opened
    (cached / "model.h5").write_bytes(b"tampered")
    done = probe("models:/m/4", tmp_path)  # refetched from the store, which has no such model
    assert done.returncode == 1 and "error: model models:/m/4: cannot be fetched" in done.stderr
    assert (cached / "model.h5").read_bytes() == b"tampered"  # and never handed to Keras
