"""The one internal representation every source is read into: a CT volume per patient."""

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from sarcoma_seg.errors import SarcomaSegError

KAGGLE_H5 = "lab_petct_vox_5.00mm.h5"
KAGGLE_GROUPS = ("ct_data", "pet_data", "label_data")
KAGGLE_SPACING_MM = (5.0, 5.0, 5.0)  # the Kaggle file is resampled to 5 mm isotropic voxels


@dataclass
class Volume:
    """One patient: CT in HU, binary tumour mask, optional PET on the CT grid, spacing in mm."""

    patient_id: str
    ct: np.ndarray  # (slices, rows, cols) float32 HU; axis 0 is axial
    mask: np.ndarray  # (slices, rows, cols) uint8 0/1
    pet: np.ndarray | None
    spacing: tuple[float, float, float]  # mm along (slices, rows, cols)
    provenance: str

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm3."""
        return float(np.prod(self.spacing))


def _check_h5_dataset(path: Path, name: str, dset: h5py.Dataset) -> None:
    """Refuse datasets whose data live outside the file (external or virtual)."""
    if dset.is_virtual or dset.external:
        raise SarcomaSegError(f"{path}: dataset {name} is stored outside the file; refusing it")


def h5_patient_ids(path: Path) -> list[str]:
    """The patient ids of a Kaggle-schema HDF5 file, after checking its groups agree."""
    try:
        with h5py.File(path, "r") as h5:
            missing = [g for g in ("ct_data", "label_data") if g not in h5]
            if missing:
                raise SarcomaSegError(f"{path}: missing group(s) {', '.join(missing)}")
            ct_ids, label_ids = set(h5["ct_data"]), set(h5["label_data"])
    except OSError as exc:
        raise SarcomaSegError(f"{path}: not a readable HDF5 file ({exc})") from exc
    if ct_ids != label_ids:
        odd = sorted(ct_ids ^ label_ids)
        raise SarcomaSegError(f"{path}: patient(s) {', '.join(odd)} lack a CT or a label volume")
    if not ct_ids:
        raise SarcomaSegError(f"{path}: no patients in group ct_data")
    return sorted(ct_ids)


def read_h5_patient(path: Path, patient_id: str) -> Volume:
    """Read one patient of a Kaggle-schema HDF5 file and validate it."""
    with h5py.File(path, "r") as h5:
        dsets = {g: h5[g][patient_id] for g in KAGGLE_GROUPS if g in h5 and patient_id in h5[g]}
        for group, dset in dsets.items():
            _check_h5_dataset(path, f"{group}/{patient_id}", dset)
        ct = np.asarray(dsets["ct_data"][()], dtype=np.float32)
        label = np.asarray(dsets["label_data"][()])
        pet = dsets["pet_data"][()].astype(np.float32) if "pet_data" in dsets else None
    if pet is not None and pet.ndim == 4 and pet.shape[-1] == 1:
        pet = pet[..., 0]  # the real file's PET carries a trailing singleton axis
    volume = Volume(patient_id, ct, label > 0, pet, KAGGLE_SPACING_MM, f"{path.name}:{patient_id}")
    check_volume(volume, label)
    volume.mask = volume.mask.astype(np.uint8)
    return volume


def check_volume(volume: Volume, raw_label: np.ndarray) -> None:
    """Validate shapes, finiteness and label values of one patient."""
    where = f"{volume.provenance} (patient {volume.patient_id})"
    if volume.ct.ndim != 3:
        raise SarcomaSegError(f"{where}: CT must be 3D, got shape {volume.ct.shape}")
    if raw_label.shape != volume.ct.shape:
        raise SarcomaSegError(
            f"{where}: CT shape {volume.ct.shape} and mask shape {raw_label.shape} differ"
        )
    if volume.pet is not None and volume.pet.shape != volume.ct.shape:
        raise SarcomaSegError(f"{where}: PET shape {volume.pet.shape} != CT {volume.ct.shape}")
    if not np.isfinite(volume.ct).all():
        raise SarcomaSegError(f"{where}: CT holds NaN or infinite voxels")
    if raw_label.dtype.kind == "f" and not np.isfinite(raw_label).all():
        raise SarcomaSegError(f"{where}: mask holds NaN or infinite voxels")
    if raw_label.dtype.kind == "f" and not np.array_equal(raw_label, np.round(raw_label)):
        raise SarcomaSegError(f"{where}: mask values are not integer labels")
    if raw_label.min() < 0:
        raise SarcomaSegError(f"{where}: mask holds negative values, not labels")


def raw_h5_path(raw_dir: Path) -> Path:
    """The Kaggle-schema HDF5 file inside a data/raw folder."""
    path = Path(raw_dir) / KAGGLE_H5
    if not path.is_file():
        raise SarcomaSegError(f"{raw_dir}: {KAGGLE_H5} not found; run the download stage first")
    return path


def raw_patient_ids(raw_dir: Path) -> list[str]:
    """All patient ids available in data/raw."""
    return h5_patient_ids(raw_h5_path(raw_dir))


def load_volumes(raw_dir: Path, patient_ids: list[str]) -> list[Volume]:
    """Read the named patients from data/raw, in the given order."""
    path = raw_h5_path(raw_dir)
    known = set(h5_patient_ids(path))
    unknown = [p for p in patient_ids if p not in known]
    if unknown:
        raise SarcomaSegError(f"{path}: patient(s) {', '.join(unknown)} not in the file")
    return [read_h5_patient(path, pid) for pid in patient_ids]
