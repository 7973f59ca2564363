"""One new scan to segment, read from the format it came in (NIfTI, DICOM series, Kaggle HDF5,
PNG slice) into the internal (slices, rows, cols) layout, and a writer that puts a mask back into
that scan's own geometry."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from PIL import Image

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.io import dicom
from sarcoma_seg.readers import (
    IMAGE_MODES,
    NIFTI_ERRORS,
    canonical_spacing,
    check_nifti_header,
    internal_axes,
    read_pet_onto,
    read_png,
)
from sarcoma_seg.volumes import KAGGLE_SPACING_MM, h5_patient_ids, read_h5_arrays


@dataclass
class Scan:
    """A CT (and PET on its grid, if given) in the orientation the model was trained in."""

    name: str
    ct: np.ndarray  # (slices, rows, cols) float32
    pet: np.ndarray | None
    spacing: tuple[float, float, float]  # mm along (slices, rows, cols)
    units: str  # "HU", or "png8" for an 8-bit exported slice
    save_mask: Callable[[np.ndarray, Path], Path]  # writes a mask in the input's own geometry
    mask_suffix: str  # file suffix of what save_mask writes


def _canonical_scan(name: str, image: nib.Nifti1Image, pet: Path | None) -> Scan:
    """A scan from a 3D NIfTI image: canonical RAS+ for the model, saved back in its own axes."""
    try:
        canonical = nib.as_closest_canonical(image)
        ct = internal_axes(canonical.get_fdata(dtype=np.float32))
    except NIFTI_ERRORS as exc:
        raise SarcomaSegError(f"{name}: unreadable or truncated NIfTI file ({exc})") from exc
    if not np.isfinite(ct).all():
        raise SarcomaSegError(f"{name}: CT holds NaN or infinite voxels")
    pet_array = None
    if pet is not None:
        pet_array = internal_axes(read_pet_onto(pet, name, canonical.shape, canonical.affine))
    to_input = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(image.affine))

    def save(mask: np.ndarray, path: Path) -> Path:
        """The mask with the input's affine and axis order, as uint8 0/1."""
        data = apply_orientation(mask.transpose(2, 1, 0), to_input).astype(np.uint8)
        out = nib.Nifti1Image(data, image.affine)
        out.set_qform(image.affine, code=1)  # scanner coordinates, as the input's affine
        out.set_sform(image.affine, code=1)
        out.header.set_xyzt_units(*image.header.get_xyzt_units())
        nib.save(out, path)
        return path

    return Scan(name, ct, pet_array, canonical_spacing(canonical.affine), "HU", save, ".nii.gz")


def scan_stem(path: Path, patient_id: str | None = None) -> str:
    """A short name for a scan's outputs: the file name without its suffixes (+ patient)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".hdf5", ".h5", ".png"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return f"{name}-{patient_id}" if patient_id else name


def read_nifti_scan(path: Path, pet: Path | None = None) -> Scan:
    """A 3D NIfTI CT in HU (and optionally a PET NIfTI, resampled onto it)."""
    try:
        image = nib.load(path)
    except NIFTI_ERRORS as exc:
        raise SarcomaSegError(f"{path}: unreadable NIfTI file ({exc})") from exc
    check_nifti_header(image, str(path))  # before any data are read
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = nib.squeeze_image(image)  # some converters write (x, y, z, 1)
    if len(image.shape) != 3:
        raise SarcomaSegError(f"{path}: a CT volume must be 3D, this is {image.shape}")
    if image.get_data_dtype().kind not in "biuf":
        raise SarcomaSegError(f"{path}: stored as {image.get_data_dtype()}, not real numbers")
    return _canonical_scan(str(path), image, pet)


def read_dicom_series(folder: Path, pet: Path | None = None) -> Scan:
    """A folder of CT slices: sorted along the slice normal, rescaled to HU, placed by the
    DICOM geometry (converted from DICOM's LPS to NIfTI's RAS); the mask goes back as NIfTI
    and, beside it, as an RTSTRUCT on the input series (dicom.RTSTRUCT_NAME)."""
    grid, hu = dicom.read_ct_series(folder)
    image = nib.Nifti1Image(hu.transpose(2, 1, 0), grid.affine)  # (slices, rows, cols) -> ijk
    scan = _canonical_scan(folder.name, image, pet)
    save_nifti = scan.save_mask

    def save(mask: np.ndarray, path: Path) -> Path:
        """The NIfTI mask, and the RTSTRUCT outlining it on the input's slices."""
        save_nifti(mask, path)
        own = dicom.from_canonical(mask, grid.affine)  # back to the series' own order
        dicom.write_rtstruct(grid, own, path.parent / dicom.RTSTRUCT_NAME)
        return path

    scan.save_mask = save
    return scan


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


def read_png_slice(path: Path) -> Scan:
    """One 8-bit grayscale CT slice exported as PNG; the mask is a PNG of the same size."""
    array = read_png(path, path.stem, IMAGE_MODES)  # 8-bit grayscale, as the exported set

    def save(mask: np.ndarray, out: Path) -> Path:
        """0 background / 1 tumour, as the exported data set's masks."""
        Image.fromarray(mask[0].astype(np.uint8)).save(out)
        return out

    ct = array[None].astype(np.float32)
    return Scan(path.stem, ct, None, KAGGLE_SPACING_MM, "png8", save, ".png")


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
