"""The kaggle source, offline: a fake API object stands in for the network."""

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sarcoma_seg import kaggle_source, sources
from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.phantom import write_phantom_set
from tests.conftest import data_section

ROOT = Path(__file__).resolve().parents[1]
DATASET = "4quant/soft-tissue-sarcoma"
SENTINEL_USER = "sentinel-user-7f3a9c"
SENTINEL_KEY = "sentinel-key-0d41e8b2"


class FakeKaggleApi:
    """Stands in for kaggle's KaggleApi: 'downloads' a prepared zip like dataset_download_files."""

    def __init__(self, zip_path: Path, error: Exception | None = None) -> None:
        self.zip_path = zip_path
        self.error = error
        self.calls: list[tuple[str, dict]] = []

    def dataset_download_files(
        self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()
    ) -> None:
        """Copy the zip to <path>/<slug>.zip, as kaggle 2.x does."""
        self.calls.append((dataset, {"path": path, "quiet": quiet, "unzip": unzip}))
        if self.error is not None:
            raise self.error
        print(f"Dataset URL: https://www.kaggle.com/datasets/{dataset}")
        shutil.copy(self.zip_path, Path(path) / f"{dataset.split('/')[1]}.zip")


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A tiny Kaggle-schema h5 and study list, as the real zip holds."""
    return write_phantom_set(tmp_path_factory.mktemp("src"), 2, (12, 48, 48), 3)


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory: pytest.TempPathFactory, phantom_files: list[Path]) -> Path:
    """A zip of the phantom files, shaped like Kaggle's data set download."""
    zip_path = tmp_path_factory.mktemp("zip") / "soft-tissue-sarcoma.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in phantom_files:
            archive.write(path, path.name)
    return zip_path


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An environment with no Kaggle credentials anywhere; returns the empty HOME."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    return home


def make_zip(path: Path, members: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> Path:
    """A zip with the given raw member names (no sanitising) and optional symlink members."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name in symlinks:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_download_extracts_exactly_the_zip_files(
    tmp_path: Path, dataset_zip: Path, phantom_files: list[Path]
) -> None:
    api = FakeKaggleApi(dataset_zip)
    out_dir = tmp_path / "raw"
    extracted = kaggle_source.download_dataset(DATASET, out_dir, api=api)
    assert [p.name for p in extracted] == sorted(p.name for p in phantom_files)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in phantom_files)
    for path in phantom_files:
        assert (out_dir / path.name).read_bytes() == path.read_bytes()
    assert api.calls == [(DATASET, api.calls[0][1])]
    assert api.calls[0][1]["unzip"] is False
    # the download's temp dir is gone: only out_dir remains beside it
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_missing_credentials_message_says_how_to_fix(no_credentials: Path) -> None:
    assert not kaggle_source.credentials_present()
    with pytest.raises(SarcomaSegError) as excinfo:
        kaggle_source.make_api()
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "kaggle.json", "synthetic"):
        assert needle in message


def test_fetch_kaggle_without_credentials_changes_nothing(
    no_credentials: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "data" / "raw"
    data = data_section(source="kaggle", kaggle_dataset=DATASET)
    with pytest.raises(SarcomaSegError, match="KAGGLE_API_TOKEN"):
        sources.fetch(data, 42, out_dir)
    assert not out_dir.exists()
    assert list(out_dir.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("env", "files", "expected"),
    [
        ({}, {}, False),
        ({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, {}, True),
        ({"KAGGLE_USERNAME": "u"}, {}, False),
        ({"KAGGLE_API_TOKEN": "t"}, {}, True),
        ({}, {".kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, True),
        ({}, {".kaggle/kaggle.json": "not json"}, False),
        ({"KAGGLE_KEY": "k"}, {".kaggle/kaggle.json": '{"username": "u"}'}, True),
        ({"KAGGLE_CONFIG_DIR": "cfg"}, {"cfg/kaggle.json": '{"username": "u", "key": "k"}'}, True),
        ({}, {".config/kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, True),
        ({}, {".kaggle/access_token": "token\n"}, True),
        ({}, {".kaggle/access_token": "  \n"}, False),
        ({}, {".kaggle/credentials.json": '{"refresh_token": "r"}'}, True),
    ],
)
def test_credentials_present(tmp_path: Path, env: dict, files: dict, expected: bool) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    if "KAGGLE_CONFIG_DIR" in env:
        env = {**env, "KAGGLE_CONFIG_DIR": str(tmp_path / env["KAGGLE_CONFIG_DIR"])}
    assert kaggle_source.credentials_present(env=env, home=tmp_path) is expected


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A subprocess environment without Kaggle credentials, HOME pointing at home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def test_import_without_credentials_neither_exits_nor_imports_kaggle(tmp_path: Path) -> None:
    code = (
        "import sys, sarcoma_seg.kaggle_source, sarcoma_seg.sources\n"
        "print('kaggle imported:', 'kaggle' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(tmp_path), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "kaggle imported: False"


def test_make_api_with_env_key_authenticates_offline(tmp_path: Path) -> None:
    """The real kaggle package: a legacy username/key pair authenticates without the network."""
    pytest.importorskip("kaggle")
    code = (
        "from sarcoma_seg.kaggle_source import make_api\n"
        "api = make_api()\n"
        "print(type(api).__name__, callable(api.dataset_download_files))\n"
    )
    env = clean_env(tmp_path, KAGGLE_USERNAME=SENTINEL_USER, KAGGLE_KEY=SENTINEL_KEY)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "KaggleApi True"
    assert SENTINEL_KEY not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../escape.txt", "'..'"),
        ("data/../../escape.txt", "'..'"),
        ("/etc/escape.txt", "absolute"),
        ("C:/escape.txt", "drive"),
        ("..\\escape.txt", "'..'"),
    ],
)
def test_unsafe_member_is_refused_and_nothing_extracted(
    tmp_path: Path, member: str, problem: str
) -> None:
    zip_path = make_zip(tmp_path / "evil.zip", {"fine.txt": b"ok", member: b"boom"})
    dest = tmp_path / "out" / "raw"
    with pytest.raises(SarcomaSegError) as excinfo:
        kaggle_source.safe_extract(zip_path, dest)
    message = str(excinfo.value)
    assert repr(member) in message and "evil.zip" in message and problem in message
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out").exists()


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    zip_path = make_zip(tmp_path / "links.zip", {"fine.txt": b"ok"}, symlinks=("link",))
    dest = tmp_path / "raw"
    with pytest.raises(SarcomaSegError, match=r"'link' is a symlink"):
        kaggle_source.safe_extract(zip_path, dest)
    assert not dest.exists()


def test_corrupt_zip_is_refused(tmp_path: Path) -> None:
    zip_path = tmp_path / "broken.zip"
    zip_path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(SarcomaSegError, match="broken.zip"):
        kaggle_source.safe_extract(zip_path, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_bad_crc_leaves_nothing_half_written(tmp_path: Path) -> None:
    zip_path = tmp_path / "crc.zip"
    payload = b"A" * 4096
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("first.txt", b"fine")
        archive.writestr("second.bin", payload)
    data = bytearray(zip_path.read_bytes())
    data[data.rindex(payload) + 100] ^= 0xFF  # flip one stored byte: the CRC no longer matches
    zip_path.write_bytes(bytes(data))
    dest = tmp_path / "out" / "raw"
    with pytest.raises(SarcomaSegError, match="crc.zip"):
        kaggle_source.safe_extract(zip_path, dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_dataset_slug_names_param(tmp_path: Path, dataset_zip: Path) -> None:
    with pytest.raises(SarcomaSegError, match=r"data\.kaggle_dataset"):
        kaggle_source.download_dataset("../etc", tmp_path / "raw", api=FakeKaggleApi(dataset_zip))


def test_credentials_never_leak_into_manifest_or_output(
    tmp_path: Path,
    dataset_zip: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", SENTINEL_USER)
    monkeypatch.setenv("KAGGLE_KEY", SENTINEL_KEY)
    monkeypatch.setattr(kaggle_source, "make_api", lambda: FakeKaggleApi(dataset_zip))
    out_dir = tmp_path / "data" / "raw"
    data = data_section(source="kaggle", kaggle_dataset=DATASET)
    manifest = sources.fetch(data, 42, out_dir)
    assert manifest["source"] == "kaggle"
    assert manifest["dataset"] == DATASET
    assert manifest["version"] == "latest"
    assert [f["name"] for f in manifest["files"]] == [
        "lab_petct_vox_5.00mm.h5",
        "study_list.csv",
    ]
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, repr(manifest)]
    texts += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    for text in texts:
        assert SENTINEL_USER not in text
        assert SENTINEL_KEY not in text


def test_api_error_text_is_not_echoed(tmp_path: Path, dataset_zip: Path) -> None:
    """An API error may quote a request with the key in it: only its type is reported."""
    api = FakeKaggleApi(dataset_zip, error=RuntimeError(f"401 for key={SENTINEL_KEY}"))
    with pytest.raises(SarcomaSegError) as excinfo:
        kaggle_source.download_dataset(DATASET, tmp_path / "raw", api=api)
    assert SENTINEL_KEY not in str(excinfo.value)
    assert "RuntimeError" in str(excinfo.value)
    assert not (tmp_path / "raw").exists()


def test_pinned_version_is_recorded() -> None:
    assert kaggle_source.dataset_version("4quant/soft-tissue-sarcoma/3") == "3"
    assert kaggle_source.dataset_version(DATASET) == "latest"
