"""The one internal representation every source is read into: a CT volume per patient."""

from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from sarcoma_seg.errors import SarcomaSegError

KAGGLE_H5 = "lab_petct_vox_5.00mm.h5"
KAGGLE_GROUPS = ("ct_data", "pet_data", "label_data")
STORE = "volumes.h5"  # the internal representation that split, preprocess and evaluate read
KAGGLE_SPACING_MM = (5.0, 5.0, 5.0)  # the Kaggle file is resampled to 5 mm isotropic voxels


@dataclass
class Volume:
    """One patient: CT in HU, binary tumour mask, optional PET on the CT grid, spacing in mm."""

    patient_id: str
    ct: np.ndarray  # (slices, rows, cols) float32 HU; axis 0 is axial
    mask: np.ndarray  # (slices, rows, cols) uint8 0/1
    pet: np.ndarray | None
    spacing: tuple[float, float, float]  # mm along (slices, rows, cols)
    provenance: str  # where it came from: file (and dataset) names, for error messages and lineage
    units: str = "HU"  # "HU", or "png8" for 8-bit intensities exported to PNG (no HU to recover)

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


def read_h5_arrays(
    path: Path, patient_id: str, groups: tuple[str, ...] = KAGGLE_GROUPS
) -> dict[str, np.ndarray]:
    """One patient's datasets of a Kaggle-schema HDF5 file by group (those of groups present),
    refusing data stored outside the file; CT and PET as float32."""
    with h5py.File(path, "r") as h5:
        dsets = {g: h5[g][patient_id] for g in groups if g in h5 and patient_id in h5[g]}
        for group, dset in dsets.items():
            _check_h5_dataset(path, f"{group}/{patient_id}", dset)
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


def resample(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """Resample to a target spacing in mm: linear for CT and PET, nearest for the mask."""
    factors = [old / new for old, new in zip(volume.spacing, spacing)]
    shape = [max(1, round(n * f)) for n, f in zip(volume.ct.shape, factors)]
    zoom = [s / n for s, n in zip(shape, volume.ct.shape)]  # exact output shape for all arrays
    pet = None if volume.pet is None else ndimage.zoom(volume.pet, zoom, order=1)
    return replace(
        volume,
        ct=ndimage.zoom(volume.ct, zoom, order=1),
        mask=ndimage.zoom(volume.mask, zoom, order=0),
        pet=pet,
        spacing=tuple(float(o / z) for o, z in zip(volume.spacing, zoom)),
    )


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
    with h5py.File(store_path(raw_dir), "r") as h5:
        return sorted(h5)


def load_volumes(raw_dir: Path, patient_ids: list[str]) -> list[Volume]:
    """Read the named patients from the internal store, in the given order."""
    path = store_path(raw_dir)
    with h5py.File(path, "r") as h5:
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
