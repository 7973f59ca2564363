"""HDF5: the check that a file reads only itself and declares no more than a volume may hold,
the Kaggle-schema reader (hdf5, kaggle and synthetic sources) and predict's HDF5 reader and mask
writer. The internal store (volumes.h5) is written and read in volumes.py."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.common import Scan
from sarcoma_seg.volumes import (
    KAGGLE_GROUPS,
    KAGGLE_H5,
    KAGGLE_PATIENT_PART,
    KAGGLE_SPACING_MM,
    MAX_DATASET_BYTES,
    MAX_SLICES,
    MAX_VOXELS,
    Volume,
    validated_volume,
)


def _h5_patient(name: str, patient_part: int) -> str:
    """ " (patient X)" for a link name whose patient_part-th component is the patient, else ""."""
    parts = name.split("/")
    return f" (patient {parts[patient_part]})" if len(parts) > patient_part else ""


def _dataset_problem(path: Path, name: str, dset: h5py.Dataset, patient: str) -> str | None:
    """Why a dataset is refused (stored outside the file, or declaring too much data), or None."""
    if dset.is_virtual or dset.external:
        return f"{path}: dataset {name}{patient} is stored outside the file; refusing it"
    if dset.size > MAX_VOXELS or dset.nbytes > MAX_DATASET_BYTES:
        return (
            f"{path}: dataset {name}{patient} declares shape {dset.shape} of {dset.dtype} "
            f"({dset.nbytes / 2**30:.3g} GiB), more than the {MAX_VOXELS} voxels a volume may "
            "have; refusing it before reading"
        )
    if dset.ndim >= 3 and dset.shape[0] > MAX_SLICES:  # both schemas put slices first
        return (
            f"{path}: dataset {name}{patient} declares {dset.shape[0]} slices, more than the "
            f"{MAX_SLICES} a volume may have; refusing it before reading"
        )
    return None


def _link_problem(path: Path, h5: h5py.File, name: str, patient_part: int) -> str | None:
    """Why the link at name is refused (external or soft, or a refused dataset), or None."""
    link = h5.get(name, getlink=True)
    patient = _h5_patient(name, patient_part)
    if isinstance(link, h5py.ExternalLink):
        return (
            f"{path}: {name}{patient} is an external link to {link.filename}:{link.path}; "
            "refusing it"
        )
    if isinstance(link, h5py.SoftLink):
        return f"{path}: {name}{patient} is a soft link to {link.path}; refusing it"
    item = h5.get(name)  # a hard link: the object lives in this file
    return _dataset_problem(path, name, item, patient) if isinstance(item, h5py.Dataset) else None


def check_h5_links(path: Path, h5: h5py.File, patient_part: int) -> None:
    """Refuse an HDF5 file that reaches beyond itself or declares too much data: external and
    soft links (soft-link loops included), external or virtual storage, huge datasets. Links
    are listed, never followed; patient_part says which component of a name is the patient."""
    # the visitor must not raise (h5py turns that into a SystemError): it returns the first
    # problem, which also stops the walk
    problem = h5.visit_links(lambda name: _link_problem(path, h5, name, patient_part))
    if problem:
        raise SarcomaSegError(problem)


@contextmanager
def open_h5(path: Path, patient_part: int) -> Iterator[h5py.File]:
    """An HDF5 file opened read-only after check_h5_links; unreadable files raise one line."""
    try:
        with h5py.File(path, "r") as h5:
            check_h5_links(path, h5, patient_part)
            yield h5
    except OSError as exc:
        raise SarcomaSegError(f"{path}: not a readable HDF5 file ({exc})") from exc


def h5_patient_ids(path: Path) -> list[str]:
    """The patient ids of a Kaggle-schema HDF5 file, after checking its groups agree."""
    with open_h5(path, KAGGLE_PATIENT_PART) as h5:
        missing = [g for g in ("ct_data", "label_data") if g not in h5]
        if missing:
            raise SarcomaSegError(f"{path}: missing group(s) {', '.join(missing)}")
        ct_ids, label_ids = set(h5["ct_data"]), set(h5["label_data"])
    if ct_ids != label_ids:
        odd = sorted(ct_ids ^ label_ids)
        raise SarcomaSegError(f"{path}: patient(s) {', '.join(odd)} lack a CT or a label volume")
    if not ct_ids:
        raise SarcomaSegError(f"{path}: no patients in group ct_data")
    return sorted(ct_ids)


def read_h5_arrays(
    path: Path, patient_id: str, groups: tuple[str, ...] = KAGGLE_GROUPS
) -> dict[str, np.ndarray]:
    """One patient's datasets of a Kaggle-schema HDF5 file by group (those of groups present),
    refusing data stored outside the file; CT and PET as float32."""
    with open_h5(path, KAGGLE_PATIENT_PART) as h5:  # every link and dataset checked first
        dsets = {g: h5[g][patient_id] for g in groups if g in h5 and patient_id in h5[g]}
        arrays = {g: np.asarray(d[()]) for g, d in dsets.items()}
    for group in ("ct_data", "pet_data"):
        if group in arrays:
            arrays[group] = arrays[group].astype(np.float32)
    pet = arrays.get("pet_data")
    if pet is not None and pet.ndim == 4 and pet.shape[-1] == 1:
        arrays["pet_data"] = pet[..., 0]  # the real file's PET carries a trailing singleton axis
    return arrays


def read_h5_patient(path: Path, patient_id: str) -> Volume:
    """Read one patient of a Kaggle-schema HDF5 file and validate it."""
    arrays = read_h5_arrays(path, patient_id)
    ct, label, pet = arrays["ct_data"], arrays["label_data"], arrays.get("pet_data")
    provenance = f"{path.name}:{patient_id}"
    return validated_volume(patient_id, ct, label, pet, KAGGLE_SPACING_MM, provenance)


def read_kaggle_h5(path: Path) -> list[Volume]:
    """Every patient of a Kaggle-schema HDF5 file, validated."""
    path = Path(path)
    if not path.is_file():
        raise SarcomaSegError(f"{path}: file not found")
    return [read_h5_patient(path, pid) for pid in h5_patient_ids(path)]


def find_kaggle_h5(folder: Path) -> Path:
    """The Kaggle-schema HDF5 file inside a downloaded folder (an archive may nest it)."""
    found = sorted(Path(folder).rglob(KAGGLE_H5))
    if len(found) != 1:
        what = "not found" if not found else "found more than once"
        raise SarcomaSegError(f"{folder}: {KAGGLE_H5} {what}")
    return found[0]


def read_h5_scan(path: Path, patient_id: str | None) -> Scan:
    """One patient's CT (and PET) from a Kaggle-schema HDF5 file; the mask goes back to HDF5."""
    if not patient_id:
        raise SarcomaSegError(f"{path}: an HDF5 input needs --patient (one of its patient ids)")
    ids = h5_patient_ids(path)
    if patient_id not in ids:
        raise SarcomaSegError(f"{path}: patient {patient_id} not found; it holds {', '.join(ids)}")
    arrays = read_h5_arrays(path, patient_id, ("ct_data", "pet_data"))  # no label needed
    ct, pet = arrays["ct_data"], arrays.get("pet_data")
    if ct.ndim != 3:
        raise SarcomaSegError(f"{path}: patient {patient_id} CT has shape {ct.shape}, not 3D")
    if not np.isfinite(ct).all():
        raise SarcomaSegError(f"{path}: patient {patient_id} CT holds NaN or infinite voxels")

    def save(mask: np.ndarray, out: Path) -> Path:
        """The mask as label_data/<patient> of a Kaggle-schema HDF5 file, on the CT's grid."""
        with h5py.File(out, "w") as h5:
            h5.create_dataset(f"label_data/{patient_id}", data=mask.astype(np.uint8))
        return out

    return Scan(f"{path.stem}-{patient_id}", ct, pet, KAGGLE_SPACING_MM, "HU", save, ".h5")
