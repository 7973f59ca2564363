"""The internal store, data/raw/volumes.h5: every patient of every source as one HDF5 group
(ct, mask, optional pet, spacing, provenance, units), written once by the download stage and read
by split, preprocess, evaluate and the benchmarks."""

from pathlib import Path

import h5py
import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.hdf5 import open_h5
from sarcoma_seg.volumes import Volume

STORE = "volumes.h5"  # the internal representation that split, preprocess and evaluate read
STORE_PATIENT_PART = 0  # <patient>/ct: the patient is the first part of a dataset name


def write_store(path: Path, volumes: list[Volume]) -> None:
    """Write the internal representation: one HDF5 group per patient with spacing and provenance."""
    ids = [v.patient_id for v in volumes]
    dupes = sorted({p for p in ids if ids.count(p) > 1})
    if dupes:
        raise SarcomaSegError(f"duplicate patient id(s) {', '.join(dupes)} in the input")
    with h5py.File(path, "w") as h5:
        for v in volumes:
            group = h5.create_group(v.patient_id)
            opts = {"compression": "gzip", "shuffle": True}
            group.create_dataset("ct", data=v.ct.astype(np.float32), **opts)
            group.create_dataset("mask", data=v.mask.astype(np.uint8), **opts)
            if v.pet is not None:
                group.create_dataset("pet", data=v.pet.astype(np.float32), **opts)
            group.attrs.update(spacing=v.spacing, provenance=v.provenance, units=v.units)


def store_path(raw_dir: Path) -> Path:
    """The internal volume store inside data/raw."""
    path = Path(raw_dir) / STORE
    if not path.is_file():
        raise SarcomaSegError(f"{raw_dir}: {STORE} not found; run the download stage first")
    return path


def raw_patient_ids(raw_dir: Path) -> list[str]:
    """All patient ids available in data/raw."""
    with open_h5(store_path(raw_dir), STORE_PATIENT_PART) as h5:
        return sorted(h5)


def load_volumes(raw_dir: Path, patient_ids: list[str]) -> list[Volume]:
    """Read the named patients from the internal store, in the given order."""
    path = store_path(raw_dir)
    with open_h5(path, STORE_PATIENT_PART) as h5:
        unknown = [p for p in patient_ids if p not in h5]
        if unknown:
            raise SarcomaSegError(f"{path}: patient(s) {', '.join(unknown)} not in the store")
        return [_read_stored(h5[pid], pid) for pid in patient_ids]


def _read_stored(group: h5py.Group, patient_id: str) -> Volume:
    """One patient group of the store as a Volume."""
    return Volume(
        patient_id=patient_id,
        ct=group["ct"][()],
        mask=group["mask"][()],
        pet=group["pet"][()] if "pet" in group else None,
        spacing=tuple(float(s) for s in group.attrs["spacing"]),
        provenance=str(group.attrs["provenance"]),
        units=str(group.attrs["units"]),
    )
