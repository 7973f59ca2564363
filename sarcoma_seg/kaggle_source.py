"""The `kaggle` data source: download a Kaggle data set zip and extract it safely.

`kaggle/__init__.py` builds a KaggleApi and authenticates at import time (kaggle 2.2.x catches
the SystemExit that a missing login raises; older 2.x releases exit the process, and all of
them print help to stdout). So the package is imported only inside make_api(), and only after
credentials_present() found something to authenticate with.
"""

import contextlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.volumes import MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, MAX_MEMBER_BYTES

MISSING_CREDENTIALS = (
    "kaggle credentials not found: set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN,"
    " or save kaggle.json in ~/.kaggle (or $KAGGLE_CONFIG_DIR); to run offline set"
    " data.source: synthetic in params.yaml and run dvc repro,"
    " or run dvc exp run -S data.source=synthetic"
)
OFFLINE_HINT = "to run offline use dvc exp run -S data.source=synthetic"
DRIVE = re.compile(r"^[A-Za-z]:")
SLUG = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(/\d+)?$")  # owner/name[/version]


def config_dir(env: Mapping[str, str], home: Path) -> Path:
    """The directory kaggle reads kaggle.json from, chosen the way KaggleApi chooses it."""
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    legacy = home / ".kaggle"
    if legacy.exists():
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON object from path, or {} if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def has_text(path: Path) -> bool:
    """True if path is a file with some non-blank content."""
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def credentials_present(env: Mapping[str, str] | None = None, home: Path | None = None) -> bool:
    """True if any credential kaggle 2.x accepts is there (never reads secrets out)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else Path(home)
    if env.get("KAGGLE_API_TOKEN"):
        return True
    config = read_json_or_empty(config_dir(env, home) / "kaggle.json")
    # kaggle merges kaggle.json with KAGGLE_* variables, so a pair may come half from each
    if (env.get("KAGGLE_USERNAME") or config.get("username")) and (
        env.get("KAGGLE_KEY") or config.get("key")
    ):
        return True
    tokens = [home / ".kaggle" / "access_token", home / ".kaggle" / "access_token.txt"]
    if any(has_text(path) for path in tokens):
        return True
    # `kaggle auth login` (OAuth) caches a refresh token here
    return bool(read_json_or_empty(home / ".kaggle" / "credentials.json").get("refresh_token"))


def make_api() -> Any:
    """An authenticated kaggle KaggleApi; missing or rejected credentials raise one line."""
    if not credentials_present():
        raise SarcomaSegError(MISSING_CREDENTIALS)
    try:
        # importing kaggle authenticates and may print; keep its output out of the stage log
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise SarcomaSegError(f"kaggle package is not installed ({exc}); {OFFLINE_HINT}") from None
    except SystemExit:
        raise SarcomaSegError(f"kaggle rejected the credentials found; {OFFLINE_HINT}") from None
    except Exception as exc:  # network or API errors; only the type is shown, never its details
        raise SarcomaSegError(
            f"kaggle authentication failed ({type(exc).__name__}); {OFFLINE_HINT}"
        ) from None
    return api


def check_slug(dataset: object) -> str:
    """Return dataset if it looks like owner/name[/version], else raise naming the param."""
    if not isinstance(dataset, str) or not SLUG.match(dataset):
        raise SarcomaSegError(
            f"data.kaggle_dataset={dataset!r} is not allowed; use owner/name, "
            "e.g. 4quant/soft-tissue-sarcoma"
        )
    return dataset


def dataset_version(dataset: str) -> str:
    """The version pinned in an owner/name/version slug, else "latest"."""
    parts = dataset.split("/")
    return parts[2] if len(parts) == 3 else "latest"


def download_dataset(dataset: str, out_dir: Path, api: Any = None) -> list[Path]:
    """Download the data set zip with the Kaggle API and safely extract it into out_dir."""
    dataset = check_slug(dataset)
    api = make_api() if api is None else api
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".kaggle-zip-", dir=out_dir.parent) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints the data set URL
                api.dataset_download_files(dataset, path=tmp, unzip=False, quiet=True)
        except SarcomaSegError:
            raise
        except Exception as exc:  # network or API errors; only the type is shown
            raise SarcomaSegError(
                f"kaggle download of {dataset} failed ({type(exc).__name__}); {OFFLINE_HINT}"
            ) from None
        zips = sorted(Path(tmp).glob("*.zip"))
        if len(zips) != 1:
            raise SarcomaSegError(
                f"kaggle download of {dataset} left {len(zips)} zip files instead of one"
            )
        return safe_extract(zips[0], out_dir)


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member may not be extracted, or None if it is safe."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/"):
        return "has an absolute path"
    if DRIVE.match(name):
        return "has a drive letter"
    if ".." in PurePosixPath(name).parts:
        return "has a '..' component"
    if stat.S_ISLNK(info.external_attr >> 16):  # unix mode bits live in the high 16 bits
        return "is a symlink"
    return None


def check_members(zip_path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse the whole archive if any member could escape dest or is a link."""
    for info in infos:
        problem = member_problem(info)
        if problem:
            raise SarcomaSegError(f"{zip_path}: member {info.filename!r} {problem}; refusing it")


def check_sizes(zip_path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive whose directory declares too many members or too many bytes.

    The declared sizes bind: zipfile stops a member's output at its declared file_size (and
    fails its CRC), so a member cannot inflate beyond what is checked here."""
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise SarcomaSegError(
            f"{zip_path}: {len(infos)} members, more than the {MAX_ARCHIVE_MEMBERS} allowed; "
            "refusing it before extracting"
        )
    for info in infos:
        if info.file_size > MAX_MEMBER_BYTES:
            raise SarcomaSegError(
                f"{zip_path}: member {info.filename!r} declares {info.file_size} bytes "
                f"uncompressed, more than the {MAX_MEMBER_BYTES} allowed; refusing it"
            )
    total = sum(info.file_size for info in infos)
    if total > MAX_ARCHIVE_BYTES:
        raise SarcomaSegError(
            f"{zip_path}: members declare {total} bytes uncompressed in all, more than the "
            f"{MAX_ARCHIVE_BYTES} allowed; refusing it before extracting"
        )


def safe_extract(zip_path: Path, dest: Path) -> list[Path]:
    """Validate every member, then extract via a temp dir so dest never holds partial files."""
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = archive.infolist()
            check_members(zip_path, infos)
            check_sizes(zip_path, infos)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".extract-", dir=dest.parent) as tmp:
                archive.extractall(tmp)
                return move_tree(Path(tmp), dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise SarcomaSegError(f"{zip_path}: not a valid zip archive ({exc})") from None
    except OSError as exc:
        raise SarcomaSegError(f"{zip_path}: cannot read or extract ({exc.strerror})") from None


def move_tree(src: Path, dest: Path) -> list[Path]:
    """Move every file under src to the same relative place under dest; return them sorted."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    moved = []
    for path in files:
        target = dest / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        moved.append(target)
    return moved


def fetch_kaggle(out_dir: Path, kaggle_dataset: object) -> list[Path]:
    """Download data.kaggle_dataset (checked first) into out_dir."""
    dataset = check_slug(kaggle_dataset)
    return download_dataset(dataset, out_dir, make_api())
