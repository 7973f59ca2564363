"""Registry of raw-data sources and the manifest that pins what a fetch produced."""

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarcoma_seg import __version__, config, kaggle_source, phantom, readers
from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.volumes import (
    STORE,
    Volume,
    check_distinct_patients,
    find_kaggle_h5,
    read_kaggle_h5,
    resample,
    suspect_warnings,
    write_store,
)

MANIFEST_NAME = "manifest.json"
SOURCE_DIR = "source"  # downloaded or generated raw files keep their own layout here
CHUNK = 1 << 20  # 1 MiB reads keep hashing large HDF5 files at constant memory

Loaded = tuple[list[Volume], Path, list[Path]]  # volumes, input root, the input files
Source = Callable[[Path, dict, int], Loaded]


def load_synthetic(staging: Path, data_params: dict, seed: int) -> Loaded:
    """SOURCES entry: write seeded phantom patients in the Kaggle file schema, then read them."""
    synthetic = data_params.get("synthetic")
    if not isinstance(synthetic, dict):
        raise SarcomaSegError("data.synthetic must be a mapping with n_patients and shape")
    root = staging / SOURCE_DIR
    files = phantom.write_phantom_set(
        root, synthetic.get("n_patients"), synthetic.get("shape"), seed
    )
    return read_kaggle_h5(find_kaggle_h5(root)), root, files


def load_kaggle(staging: Path, data_params: dict, seed: int) -> Loaded:
    """SOURCES entry: download the Kaggle data set and read its HDF5 file."""
    root = staging / SOURCE_DIR
    files = kaggle_source.fetch_kaggle(root, data_params, seed)
    return read_kaggle_h5(find_kaggle_h5(root)), root, files


def local_path(data_params: dict, kind: str) -> Path:
    """data.path for a local source, checked to exist as the kind of thing the source reads."""
    raw = data_params.get("path")
    if not raw:
        raise SarcomaSegError(f"data.path is required for data.source={data_params['source']!r}")
    path = Path(str(raw)).expanduser()
    ok = path.is_file() if kind == "file" else path.is_dir()
    if not ok:
        raise SarcomaSegError(f"data.path={str(raw)!r}: no such {kind}")
    return path


def load_hdf5(staging: Path, data_params: dict, seed: int) -> Loaded:
    """SOURCES entry: a local file in the Kaggle schema, downloaded by hand."""
    path = local_path(data_params, "file")
    return read_kaggle_h5(path), path.parent, [path]


def load_nifti(staging: Path, data_params: dict, seed: int) -> Loaded:
    """SOURCES entry: a folder of NIfTI volumes (per-patient folders or nnU-Net / MSD layout)."""
    path = local_path(data_params, "folder")
    return readers.read_nifti(path), path, readers.nifti_inputs(path)


def load_slices(staging: Path, data_params: dict, seed: int) -> Loaded:
    """SOURCES entry: folders of exported PNG image / mask slices, pooled and grouped by patient."""
    path = local_path(data_params, "folder")
    return readers.read_slices(path), path, readers.slice_inputs(path)


SOURCES: dict[str, Source] = {
    "synthetic": load_synthetic,
    "kaggle": load_kaggle,
    "hdf5": load_hdf5,
    "nifti": load_nifti,
    "slices": load_slices,
}


def check_spacing(spacing: object) -> tuple[float, float, float] | None:
    """data.spacing: null keeps native spacing, else [slice, row, col] mm within the bounds."""
    return config.check_spacing(spacing)


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


def file_entries(root: Path, files: list[Path]) -> list[dict[str, Any]]:
    """name (posix path relative to root), bytes and sha256 of every input file, by name."""
    entries = [
        {
            "name": Path(p).relative_to(root).as_posix(),
            "bytes": Path(p).stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in files
    ]
    return sorted(entries, key=lambda entry: entry["name"])


def files_digest(entries: list[dict[str, Any]]) -> str:
    """One sha256 over the sorted (name, sha256) pairs: equal digests mean equal raw data."""
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e["name"]):
        digest.update(f"{entry['name']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


def build_manifest(
    source: str,
    data_params: dict,
    seed: int,
    loaded: Loaded,
    spacing: tuple | None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The lineage of data/raw: every input file's hash, the patients read from them and the
    warnings about them.

    It holds no absolute paths, times or credentials."""
    volumes, root, files = loaded
    dataset, version = describe(source, data_params, seed)
    entries = file_entries(root, files)
    if not entries:
        raise SarcomaSegError(f"data.source={source!r} produced no files")
    return {
        "source": source,
        "dataset": dataset,
        "version": version,
        "files": entries,
        "digest": files_digest(entries),
        "patients": [
            {
                "id": v.patient_id,
                "shape": list(v.ct.shape),
                "spacing_mm": list(v.spacing),
                "units": v.units,
                "tumour_voxels": int(v.mask.sum()),
                "pet": v.pet is not None,
            }
            for v in volumes
        ],
        "resampled_to_mm": list(spacing) if spacing else None,
        "warnings": list(warnings or []),
    }


def fetch(data_params: dict, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch data.source into out_dir with a manifest.json, replacing out_dir only on success."""
    if not isinstance(data_params, dict):
        raise SarcomaSegError("params.yaml: section data must be a mapping")
    source = choice("data.source", data_params.get("source"), SOURCES)
    spacing = check_spacing(data_params.get("spacing"))
    with staged_dir(Path(out_dir)) as tmp:  # out_dir replaced only when all is written
        loaded = SOURCES[source](tmp, data_params, seed)  # reads and validates every input
        volumes = loaded[0]
        if not volumes:
            raise SarcomaSegError(f"data.source={source!r}: no patients found")
        check_distinct_patients(volumes)
        warnings = [w for v in volumes for w in suspect_warnings(v)]
        if spacing:
            volumes = [resample(v, spacing) for v in volumes]
        write_store(tmp / STORE, volumes)
        manifest = build_manifest(source, data_params, seed, loaded, spacing, warnings)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST_NAME).write_text(text)
    for warning in warnings:  # printed once the data are in place: they do not stop it
        print(f"warning: {warning}", file=sys.stderr)
    return manifest
