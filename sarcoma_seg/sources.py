"""Registry of raw-data sources and the manifest that pins what a fetch produced."""

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sarcoma_seg import __version__, config, kaggle_source, phantom
from sarcoma_seg.digest import file_sha256
from sarcoma_seg.errors import SarcomaSegError, choice
from sarcoma_seg.io import dicom, nifti, png
from sarcoma_seg.io.common import check_inside
from sarcoma_seg.io.hdf5 import find_kaggle_h5, read_kaggle_h5
from sarcoma_seg.io.store import STORE, write_store
from sarcoma_seg.settings import Data
from sarcoma_seg.staging import staged_dir
from sarcoma_seg.volumes import (
    Volume,
    check_distinct_patients,
    resample,
    suspect_warnings,
)

MANIFEST_NAME = "manifest.json"
SOURCE_DIR = "source"  # downloaded or generated raw files keep their own layout here

Loaded = tuple[list[Volume], Path, list[Path]]  # volumes, input root, the input files
Source = Callable[[Path, Data, int], Loaded]


def load_synthetic(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: write seeded phantom patients in the Kaggle file schema, then read them."""
    root = staging / SOURCE_DIR
    synthetic = data.synthetic
    files = phantom.write_phantom_set(root, synthetic.n_patients, synthetic.shape, seed)
    return read_kaggle_h5(find_kaggle_h5(root)), root, files


def load_kaggle(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: download the Kaggle data set and read its HDF5 file."""
    root = staging / SOURCE_DIR
    files = kaggle_source.fetch_kaggle(root, data.kaggle_dataset)
    return read_kaggle_h5(find_kaggle_h5(root)), root, files


def local_path(data: Data, kind: str) -> Path:
    """data.path for a local source, checked to exist as the kind of thing the source reads."""
    raw = data.path
    if not raw:
        raise SarcomaSegError(f"data.path is required for data.source={data.source!r}")
    path = Path(str(raw)).expanduser()
    ok = path.is_file() if kind == "file" else path.is_dir()
    if not ok:
        raise SarcomaSegError(f"data.path={str(raw)!r}: no such {kind}")
    return path


def load_hdf5(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: a local file in the Kaggle schema, downloaded by hand."""
    path = local_path(data, "file")
    return read_kaggle_h5(path), path.parent, [path]


def load_nifti(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: a folder of NIfTI volumes (per-patient folders or nnU-Net / MSD layout)."""
    path = local_path(data, "folder")
    return nifti.read_nifti(path), path, nifti.nifti_inputs(path)


def load_slices(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: folders of exported PNG image / mask slices, pooled and grouped by patient."""
    path = local_path(data, "folder")
    return png.read_slices(path), path, png.slice_inputs(path)


def load_dicom(staging: Path, data: Data, seed: int) -> Loaded:
    """SOURCES entry: a folder of DICOM CT series + RTSTRUCT (+ PET), in any layout."""
    path = local_path(data, "folder")
    volumes, files = dicom.read_dicom(path, data.roi)
    return volumes, path, files


SOURCES: dict[str, Source] = {
    "synthetic": load_synthetic,
    "kaggle": load_kaggle,
    "hdf5": load_hdf5,
    "nifti": load_nifti,
    "slices": load_slices,
    "dicom": load_dicom,
}


def check_spacing(spacing: object) -> tuple[float, float, float] | None:
    """data.spacing: null keeps native spacing, else [slice, row, col] mm within the bounds."""
    return config.check_spacing(spacing)


def describe(source: str, data: Data, seed: int) -> tuple[str, Any]:
    """The (dataset id, version) recorded in the manifest for a source."""
    if source == "synthetic":
        shape = list(data.synthetic.shape)  # as params.yaml writes it: the manifest is JSON
        generator = {"n_patients": data.synthetic.n_patients, "shape": shape}
        version = {"sarcoma_seg": __version__, "generator": generator, "seed": seed}
        return "synthetic-phantom", version
    if source == "kaggle":
        dataset = str(data.kaggle_dataset)
        return dataset, kaggle_source.dataset_version(dataset)
    return source, "unversioned"  # sources without a version of their own rely on the digest


def file_entries(root: Path, files: list[Path]) -> list[dict[str, Any]]:
    """name (posix path relative to root), bytes and sha256 of every input file, by name."""
    for p in files:  # every file read: none may lead outside data.path through a link
        check_inside(p, root)
    entries = [
        {
            "name": Path(p).relative_to(root).as_posix(),
            "bytes": Path(p).stat().st_size,
            "sha256": file_sha256(p),
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
    data: Data,
    seed: int,
    loaded: Loaded,
    spacing: tuple | None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The lineage of data/raw: every input file's hash, the patients read from them and the
    warnings about them.

    It holds no absolute paths, times or credentials."""
    volumes, root, files = loaded
    dataset, version = describe(source, data, seed)
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


DEFAULT_SOURCE = "synthetic"  # params.yaml's data.source, what data.sources leaves untouched


def source_entries(data: Data) -> list[Data]:
    """The data sections of each source to read: data.sources entries (each a copy of data with
    its own source and path), or data itself when data.sources is null."""
    if not data.sources:
        return [data]
    if data.path is not None or data.source != DEFAULT_SOURCE:
        # one of them was set by hand and would be ignored without a word
        raise SarcomaSegError(
            f"data.sources is set, so data.source={data.source!r} and data.path="
            f"{str(data.path)[:80]!r} are not read; leave them at {DEFAULT_SOURCE!r} and null, or "
            "add that source to data.sources"
        )
    return [replace(data, source=e.source, path=e.path, sources=None) for e in data.sources]


def _label(index: int, entry: Data) -> str:
    """How an error names one entry of data.sources."""
    return f"data.sources[{index}] ({entry.source} {entry.path or ''})".replace(" )", ")")


def refuse_shared_patients(parts: list[tuple[Data, Loaded]]) -> None:
    """A patient id read from two sources is refused, naming both."""
    seen: dict[str, str] = {}
    for index, (entry, (volumes, _, _)) in enumerate(parts):
        label = _label(index, entry)
        for volume in volumes:
            if volume.patient_id in seen:
                raise SarcomaSegError(
                    f"patient {volume.patient_id} is in both {seen[volume.patient_id]} and {label}"
                )
            seen[volume.patient_id] = label


def merge_manifests(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """One manifest for several sources: files prefixed by <index>-<source>/, one digest over
    all, the patients of all, and each source's own dataset, version and digest."""
    files = [
        {**f, "name": f"{i}-{m['source']}/{f['name']}"}
        for i, m in enumerate(manifests)
        for f in m["files"]
    ]
    return {
        "source": "+".join(m["source"] for m in manifests),
        "dataset": "+".join(str(m["dataset"]) for m in manifests),
        "version": [m["version"] for m in manifests],
        "files": files,
        "digest": files_digest(files),
        "patients": [p for m in manifests for p in m["patients"]],
        "resampled_to_mm": manifests[0]["resampled_to_mm"],
        "warnings": [w for m in manifests for w in m["warnings"]],
        "sources": [
            {
                k: m[k] if k != "patients" else [p["id"] for p in m[k]]
                for k in ("source", "dataset", "version", "digest", "patients")
            }
            for m in manifests
        ],
    }


def source_names(entries: list[Data]) -> list[str]:
    """Each entry's source, checked against the registry."""
    return [
        choice(
            "data.source" if len(entries) == 1 else f"data.sources[{index}].source",
            entry.source,
            SOURCES,
        )
        for index, entry in enumerate(entries)
    ]


def _read_sources(entries: list[Data], seed: int, tmp: Path) -> list[tuple[Data, Loaded]]:
    """Every source read and validated; several get a staging folder each (<index>-<source>)."""
    parts = []
    for index, (entry, name) in enumerate(zip(entries, source_names(entries))):
        staging = tmp if len(entries) == 1 else tmp / f"{index}-{name}"
        staging.mkdir(exist_ok=True)
        loaded = SOURCES[name](staging, entry, seed)  # reads and validates every input
        if not loaded[0]:
            raise SarcomaSegError(f"data.source={name!r}: no patients found")
        parts.append((entry, loaded))
    refuse_shared_patients(parts)
    return parts


def fetch(data: Data, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch data.source (or every entry of data.sources, merged) into out_dir with a
    manifest.json, replacing out_dir only on success."""
    entries = source_entries(data)
    source_names(entries)  # before anything is created
    spacing = check_spacing(data.spacing)
    with staged_dir(Path(out_dir)) as tmp:  # out_dir replaced only when all is written
        parts = _read_sources(entries, seed, tmp)
        volumes = [v for _, loaded in parts for v in loaded[0]]
        check_distinct_patients(volumes)
        manifests = []
        for entry, loaded in parts:
            found = [w for v in loaded[0] for w in suspect_warnings(v)]
            manifests.append(build_manifest(entry.source, entry, seed, loaded, spacing, found))
        manifest = manifests[0] if len(manifests) == 1 else merge_manifests(manifests)
        warnings = manifest["warnings"]
        if spacing:
            volumes = [resample(v, spacing) for v in volumes]
        write_store(tmp / STORE, volumes)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (tmp / MANIFEST_NAME).write_text(text)
    for warning in warnings:  # printed once the data are in place: they do not stop it
        print(f"warning: {warning}", file=sys.stderr)
    return manifest
