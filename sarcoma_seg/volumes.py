"""The one internal representation every source is read into: a CT volume per patient.

It also holds the bounds every reader checks from headers before it allocates anything (the
HDF5 check that a file reads only itself is in io/hdf5.py), and the checks for suspect data
(labels that look like an image, the same patient under two ids, odd values worth a warning)."""

import hashlib
import re
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from sarcoma_seg.errors import SarcomaSegError

KAGGLE_H5 = "lab_petct_vox_5.00mm.h5"
KAGGLE_GROUPS = ("ct_data", "pet_data", "label_data")
KAGGLE_PATIENT_PART = 1  # ct_data/<patient>: the patient is the second part of a name
KAGGLE_SPACING_MM = (5.0, 5.0, 5.0)  # the Kaggle file is resampled to 5 mm isotropic voxels

# --- Bounds checked from headers before anything is allocated ---------------------------------
# voxels of one volume: a 512 x 512 CT of 1024 slices, the largest whole-body scan we expect;
# its float32 copy alone is 1 GiB, and reading, resampling and storing keep a few copies
MAX_VOXELS = 512 * 512 * 1024
# bytes one HDF5 dataset may declare: MAX_VOXELS of float64, the widest type a volume comes in
MAX_DATASET_BYTES = MAX_VOXELS * 8
# slices of one volume: a 2 m patient at 1 mm slices; the study's PNG patients have 168 to 203
MAX_SLICES = 2048
# pixels of one PNG slice: 4096 x 4096 is 64 times a 512 x 512 CT slice (the study's are 256 x
# 256) and stays below PIL's own decompression-bomb limit, so our message comes first
MAX_PNG_PIXELS = 4096 * 4096
# the Kaggle archive holds a handful of files and an HDF5 of 7 patients at 5 mm (tens of MB);
# these leave room for a larger release and refuse a bomb before one byte is extracted
MAX_ARCHIVE_MEMBERS = 1000
MAX_MEMBER_BYTES = 512 << 20
MAX_ARCHIVE_BYTES = 2 << 30

# --- Suspect data -----------------------------------------------------------------------------
# a mask with more distinct values than this is an image, not labels: the study's masks hold
# 0, 1 and 2, an 8-bit image up to 256 grey levels
MAX_MASK_LABELS = 16
# a PET must cover this share of its CT's voxels: the IBSI PETs cover 92% to 100% of theirs, and
# a channel that is zero over most of the CT teaches the model nothing but the crop edge
MIN_PET_COVERAGE = 0.5
PET_COVERAGE_WARN = 0.9  # below this share (and above the minimum) a warning
# the 12-bit CT scale: values beyond it are padding outside the field of view, metal, or a
# missing rescale, worth a warning (the IBSI CTs span -1000 to at most 3071 HU)
HU_SCALE = (-1024.0, 3071.0)


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
    warnings: list[str] = field(default_factory=list)  # odd findings of the reader, for the log


# a patient id names an HDF5 group, an output folder and a table row: no '/', no '..', no
# leading dot or dash, no spaces; TCIA (STS_001), Kaggle, nnU-Net case and phantom ids all fit
PATIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_patient_id(patient_id: str, where: str) -> str:
    """The id, if it fits PATIENT_ID; else one line naming where it came from."""
    if not isinstance(patient_id, str) or not PATIENT_ID.fullmatch(patient_id):
        shown = repr(patient_id)[:80]
        raise SarcomaSegError(
            f"{where}: patient id {shown} is not allowed; use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return patient_id


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
    check_labels(raw_label, where)


def validated_volume(
    patient_id: str,
    ct: np.ndarray,
    raw_label: np.ndarray,
    pet: np.ndarray | None,
    spacing: tuple[float, float, float],
    provenance: str,
    units: str = "HU",
    warnings: list[str] | None = None,
) -> Volume:
    """A reader's patient as a Volume checked by check_volume: any label > 0 is tumour, and the
    mask is kept as uint8 0/1."""
    check_patient_id(patient_id, provenance)  # before anything else: it names files and groups
    volume = Volume(patient_id, ct, raw_label > 0, pet, spacing, provenance, units, warnings or [])
    check_volume(volume, raw_label)
    volume.mask = volume.mask.astype(np.uint8)
    return volume


def distinct_values(array: np.ndarray) -> int:
    """How many distinct values an array of integer labels (checked >= 0) holds."""
    if array.dtype.kind in "biu" and array.size and int(array.max()) < 1 << 16:
        return int(np.count_nonzero(np.bincount(array.ravel())))  # linear, no sort of the volume
    return len(np.unique(array))


def check_label_count(raw_label: np.ndarray, where: str) -> None:
    """Refuse a mask whose many distinct values say it is an image, not a label map."""
    count = distinct_values(raw_label)
    if count > MAX_MASK_LABELS:
        share = float(np.count_nonzero(raw_label)) / max(raw_label.size, 1)
        raise SarcomaSegError(
            f"{where}: mask holds {count} distinct values ({share:.1%} of voxels > 0), more "
            f"than the {MAX_MASK_LABELS} a label map has; it looks like an image, not labels"
        )


def check_labels(raw: np.ndarray, where: str) -> None:
    """Refuse masks holding NaN, infinite, fractional or negative values."""
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise SarcomaSegError(f"{where}: mask holds NaN or infinite voxels")
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise SarcomaSegError(f"{where}: mask values are not integer labels")
    if raw.size and raw.min() < 0:
        raise SarcomaSegError(f"{where}: mask holds negative values, not labels")
    check_label_count(raw, where)


def check_distinct_patients(volumes: list[Volume]) -> None:
    """Refuse two patients with identical CT data: the same patient under two ids would leak
    across a split."""
    seen: dict[str, str] = {}
    for volume in volumes:
        digest = hashlib.sha256(np.ascontiguousarray(volume.ct).tobytes()).hexdigest()
        digest += str(volume.ct.shape)  # equal bytes in different shapes are different images
        if digest in seen:
            raise SarcomaSegError(
                f"patients {seen[digest]} and {volume.patient_id} have identical CT images "
                f"({volume.provenance}): the same patient under two ids would leak across a split"
            )
        seen[digest] = volume.patient_id


def suspect_warnings(volume: Volume) -> list[str]:
    """Odd but possible findings about one patient, one line each (the reader's included)."""
    where = f"{volume.provenance} (patient {volume.patient_id})"
    found = [f"{where}: {note}" for note in volume.warnings]
    if not volume.mask.any():
        found.append(f"{where}: mask has no tumour voxels")
    low, high = float(volume.ct.min()), float(volume.ct.max())
    if volume.units == "HU" and (low < HU_SCALE[0] or high > HU_SCALE[1]):
        found.append(
            f"{where}: CT values span {low:g} to {high:g} HU, beyond the CT scale "
            f"{HU_SCALE[0]:g} to {HU_SCALE[1]:g} (padding, metal or a missing rescale?)"
        )
    return found


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
