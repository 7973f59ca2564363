"""One new scan to segment, read from the format it came in (NIfTI, DICOM series, Kaggle HDF5,
PNG slice) into the internal (slices, rows, cols) layout, and a writer that puts a mask back into
that scan's own geometry. Each format's module is imported when a scan of that format is read:
predict on a NIfTI does not pay for pydicom's import."""

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.common import Scan

# reader name -> its module; also importable from here (`from sarcoma_seg.scans import ...`)
READERS = {
    "read_dicom_series": "sarcoma_seg.io.dicom",
    "read_h5_scan": "sarcoma_seg.io.hdf5",
    "read_nifti_scan": "sarcoma_seg.io.nifti",
    "read_png_slice": "sarcoma_seg.io.png",
}
__all__ = ["Scan", *READERS]


def __getattr__(name: str) -> Any:
    """A format's reader, its module imported on first use."""
    if name in READERS:
        return getattr(importlib.import_module(READERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def scan_stem(path: Path, patient_id: str | None = None) -> str:
    """A short name for a scan's outputs: the file name without its suffixes (+ patient)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".hdf5", ".h5", ".png"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}-{patient_id}" if patient_id else name


def reader_name(path: Path) -> str:
    """Which reader an input needs: a DICOM folder, NIfTI, HDF5 or PNG file; a missing or
    unknown input is refused here, before anything slow starts."""
    path = Path(path)
    if not path.exists():
        raise SarcomaSegError(f"{path}: input not found")
    if path.is_dir():
        return "read_dicom_series"
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "read_nifti_scan"
    if name.endswith((".h5", ".hdf5")):
        return "read_h5_scan"
    if name.endswith(".png"):
        return "read_png_slice"
    raise SarcomaSegError(
        f"{path}: not a CT this command reads (a NIfTI file, a DICOM folder, an HDF5 file or a PNG)"
    )


def pet_reader(pet: Path, name: str) -> Callable[[tuple, Any], Any]:
    """--pet, a file or a folder: a function reading it onto a canonical CT grid (a DICOM PET
    series folder, else a NIfTI file); name: the scan's, for error messages."""
    if Path(pet).is_dir():
        dicom = importlib.import_module("sarcoma_seg.io.dicom")
        return lambda shape, affine: dicom.read_pet_series_onto(Path(pet), name, shape, affine)[0]
    nifti = importlib.import_module("sarcoma_seg.io.nifti")
    return lambda shape, affine: nifti.pet_coverage(Path(pet), name, shape, affine)[0]


def read_scan(path: Path, patient_id: str | None = None, pet: Path | None = None) -> Scan:
    """Dispatch on what the input is: a DICOM folder, NIfTI, HDF5 or PNG file."""
    name = reader_name(path)
    reader: Callable[..., Scan] = __getattr__(name)
    if name == "read_h5_scan":
        return reader(Path(path), patient_id)
    if name == "read_png_slice":
        return reader(Path(path))
    scan_name = Path(path).name if name == "read_dicom_series" else str(path)
    if name == "read_dicom_series" and pet is not None and Path(pet).is_dir():
        importlib.import_module("sarcoma_seg.io.dicom").check_same_frame(Path(path), Path(pet))
    return reader(Path(path), pet_reader(pet, scan_name) if pet is not None else None)
