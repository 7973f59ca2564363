"""Registry of raw-data sources and the manifest that pins what a fetch produced."""

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarcoma_seg import __version__, kaggle_source, phantom
from sarcoma_seg.errors import SarcomaSegError, choice

MANIFEST_NAME = "manifest.json"
CHUNK = 1 << 20  # 1 MiB reads keep hashing large HDF5 files at constant memory

Fetcher = Callable[[Path, dict, int], list[Path]]


def fetch_synthetic(out_dir: Path, data_params: dict, seed: int) -> list[Path]:
    """SOURCES entry: write seeded phantom patients in the Kaggle file schema."""
    synthetic = data_params.get("synthetic")
    if not isinstance(synthetic, dict):
        raise SarcomaSegError("data.synthetic must be a mapping with n_patients and shape")
    return phantom.write_phantom_set(
        out_dir, synthetic.get("n_patients"), synthetic.get("shape"), seed
    )


SOURCES: dict[str, Fetcher] = {
    "synthetic": fetch_synthetic,
    "kaggle": kaggle_source.fetch_kaggle,
}


def describe(source: str, data_params: dict, seed: int) -> tuple[str, Any]:
    """The (dataset id, version) recorded in the manifest for a source."""
    if source == "synthetic":
        synthetic = data_params.get("synthetic") or {}
        generator = {"n_patients": synthetic.get("n_patients"), "shape": synthetic.get("shape")}
        version = {"sarcoma_seg": __version__, "generator": generator, "seed": seed}
        return "synthetic-phantom", version
    if source == "kaggle":
        dataset = str(data_params.get("kaggle_dataset"))
        return dataset, kaggle_source.dataset_version(dataset)
    return source, "unversioned"  # sources without a version of their own rely on the digest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(root: Path) -> list[dict[str, Any]]:
    """name (posix path relative to root), bytes and sha256 of every file under root, by name."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name != MANIFEST_NAME:
            entries.append(
                {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
            )
    return sorted(entries, key=lambda entry: entry["name"])


def files_digest(entries: list[dict[str, Any]]) -> str:
    """One sha256 over the sorted (name, sha256) pairs: equal digests mean equal raw data."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["name"]):
        digest.update(f"{entry['name']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


def build_manifest(source: str, data_params: dict, seed: int, root: Path) -> dict[str, Any]:
    """The manifest for the files under root; it holds no paths, times or credentials."""
    dataset, version = describe(source, data_params, seed)
    entries = file_entries(root)
    if not entries:
        raise SarcomaSegError(f"data.source={source!r} produced no files")
    return {
        "source": source,
        "dataset": dataset,
        "version": version,
        "files": entries,
        "digest": files_digest(entries),
    }


def replace_dir(new: Path, target: Path) -> None:
    """Put directory new in target's place; the old target is removed only after the swap."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
    try:
        new.rename(target)
    except OSError:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fetch(data_params: dict, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch data.source into out_dir with a manifest.json, replacing out_dir only on success."""
    if not isinstance(data_params, dict):
        raise SarcomaSegError("params.yaml: section data must be a mapping")
    source = choice("data.source", data_params.get("source"), SOURCES)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; it becomes the ordinary data/raw
        SOURCES[source](tmp, data_params, seed)
        manifest = build_manifest(source, data_params, seed, tmp)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST_NAME).write_text(text)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
