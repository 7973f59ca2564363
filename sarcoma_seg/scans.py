"""One new scan to segment, read from the format it came in (NIfTI, DICOM series, Kaggle HDF5,
PNG slice) into the internal (slices, rows, cols) layout, and a writer that puts a mask back into
that scan's own geometry."""

from pathlib import Path

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io.common import Scan
from sarcoma_seg.io.dicom import read_dicom_series
from sarcoma_seg.io.hdf5 import read_h5_scan
from sarcoma_seg.io.nifti import read_nifti_scan
from sarcoma_seg.io.png import read_png_slice

__all__ = ["Scan", "read_dicom_series", "read_h5_scan", "read_nifti_scan", "read_png_slice"]


def scan_stem(path: Path, patient_id: str | None = None) -> str:
    """A short name for a scan's outputs: the file name without its suffixes (+ patient)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".hdf5", ".h5", ".png"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}-{patient_id}" if patient_id else name


def read_scan(path: Path, patient_id: str | None = None, pet: Path | None = None) -> Scan:
    """Dispatch on what the input is: a DICOM folder, NIfTI, HDF5 or PNG file."""
    path = Path(path)
    if not path.exists():
        raise SarcomaSegError(f"{path}: input not found")
    if path.is_dir():
        return read_dicom_series(path, pet)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti_scan(path, pet)
    if name.endswith((".h5", ".hdf5")):
        return read_h5_scan(path, patient_id)
    if name.endswith(".png"):
        return read_png_slice(path)
    raise SarcomaSegError(
        f"{path}: not a CT this command reads (a NIfTI file, a DICOM folder, an HDF5 file or a PNG)"
    )
