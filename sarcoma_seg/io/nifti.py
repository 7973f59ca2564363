"""NIfTI: the nifti source (per-patient IBSI folders or nnU-Net / MSD layout) and predict's
NIfTI reader and mask writer.

Every reader validates the whole input before it returns anything; each problem is one
SarcomaSegError line naming the file and the patient.

NIfTI arrays come out as (slices, rows, cols) of the RAS+ canonical grid: slices run inferior
to superior, rows posterior to anterior, cols patient-left to patient-right. (Shown with
matplotlib's imshow, anterior is at the bottom and the patient's left on the left: not the
radiological view; flip rows and cols for display.)
"""

import json
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from sarcoma_seg.errors import SarcomaSegError, one_line
from sarcoma_seg.io.common import (
    Scan,
    check_inside,
    require_folder,
    visible_entries,
    where_of,
)
from sarcoma_seg.io.grid import (
    NIFTI_ERRORS,
    PetReader,
    canonical_scan,
    canonical_volume,
    check_same_grid,
    internal_axes,
    pet_onto_grid,
)
from sarcoma_seg.volumes import MAX_SLICES, MAX_VOXELS, Volume, check_labels

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IBSI_CT, IBSI_MASK, IBSI_PET = "CT_image", "CT_mask", "PET_image"  # PET_mask is not used
NNUNET_IMAGES, NNUNET_LABELS, NNUNET_JSON = "imagesTr", "labelsTr", "dataset.json"
CHANNEL_NAME = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")  # nnU-Net: <case>_0000
GZIP_SLACK = 1 << 16  # bytes of gzip header, trailer and block overhead allowed beyond the data


@dataclass(frozen=True)
class NiftiCase:
    """The files of one patient in a NIfTI folder."""

    patient_id: str
    ct: Path
    mask: Path | None  # None only where masks are optional (predict --cohort)
    pet: Path | None


def _nifti_stem(path: Path) -> str | None:
    """The name of a NIfTI file without .nii/.nii.gz, or None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and path.is_file():
            return path.name[: -len(suffix)]
    return None


def _one_nifti(folder: Path, stem: str, patient_id: str) -> Path | None:
    """folder/stem.nii.gz or folder/stem.nii, refusing both at once."""
    found = [folder / f"{stem}{s}" for s in NIFTI_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise SarcomaSegError(f"{where_of(found[0], patient_id)}: duplicated by {found[1].name}")
    return found[0] if found else None


def _ibsi_cases(folder: Path, masks: bool = True) -> list[NiftiCase]:
    """Layout (a): <PATIENT>/CT_image.nii.gz + CT_mask.nii.gz (+ PET_image.nii.gz); masks
    False: the mask may be absent (a cohort to segment)."""
    cases = []
    for sub in (p for p in visible_entries(folder) if p.is_dir()):
        pid = sub.name
        ct, mask, pet = (_one_nifti(sub, stem, pid) for stem in (IBSI_CT, IBSI_MASK, IBSI_PET))
        if ct is None and mask is None and pet is None:
            continue  # not a patient folder (e.g. imagesTr of the other layout)
        if ct is None:
            raise SarcomaSegError(f"{where_of(mask or pet, pid)}: no {IBSI_CT}.nii.gz beside it")
        if mask is None and masks:
            raise SarcomaSegError(f"{where_of(ct, pid)}: no {IBSI_MASK}.nii.gz beside it")
        cases.append(NiftiCase(pid, ct, mask, pet))
    return cases


def _pet_channel(path: Path) -> int | None:
    """The nnU-Net channel named PET in dataset.json (channel_names, or MSD's modality)."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        names = meta.get("channel_names") or meta.get("modality") or {}
        pet = [int(k) for k, name in names.items() if str(name).upper() == "PET"]
    except (OSError, ValueError, AttributeError) as exc:
        raise SarcomaSegError(
            f"{path}: not a readable nnU-Net dataset.json ({one_line(exc)})"
        ) from exc
    return pet[0] if pet and pet[0] != 0 else None


def _nnunet_files(folder: Path, with_channel: bool) -> dict[str, dict[int, Path]]:
    """case -> channel -> file in imagesTr (with_channel) or labelsTr (channel 0)."""
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in visible_entries(folder):
        stem = _nifti_stem(path)
        if stem is None:
            continue  # not a NIfTI file: notes and the like do not feed the reader
        match = CHANNEL_NAME.fullmatch(stem) if with_channel else None
        # MSD images carry no _0000 suffix: a bare <case>.nii.gz is channel 0
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if channel in found[case]:
            raise SarcomaSegError(f"{where_of(path, case)}: duplicates {found[case][channel]}")
        found[case][channel] = path
    return found


def _nnunet_cases(folder: Path, masks: bool = True) -> list[NiftiCase]:
    """Layout (b): imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz; <case> is the patient
    (masks False: labelsTr may be absent or incomplete)."""
    images_dir, labels_dir = folder / NNUNET_IMAGES, folder / NNUNET_LABELS
    if not images_dir.is_dir() and not labels_dir.is_dir():
        return []
    for present, absent in ((images_dir, labels_dir), (labels_dir, images_dir)):
        if not absent.is_dir() and (masks or absent == images_dir):
            raise SarcomaSegError(f"{present}: no {absent.name} folder beside it")
    images = _nnunet_files(images_dir, True)
    labels = _nnunet_files(labels_dir, False) if labels_dir.is_dir() else {}
    pet_channel = _pet_channel(folder / NNUNET_JSON)
    for case in sorted(set(images) | set(labels)):
        if case not in labels and masks:
            first = next(iter(images[case].values()))
            raise SarcomaSegError(
                f"{where_of(first, case)}: no label {case}.nii.gz in {labels_dir}"
            )
        if case not in images:
            raise SarcomaSegError(f"{where_of(labels[case][0], case)}: no image in {images_dir}")
        if 0 not in images[case]:
            first = next(iter(images[case].values()))
            raise SarcomaSegError(f"{where_of(first, case)}: no channel 0 image {case}_0000.nii.gz")
    return [
        NiftiCase(case, images[case][0], labels.get(case, {}).get(0), images[case].get(pet_channel))
        for case in sorted(images)
    ]


def _refuse_duplicate_patients(cases: list[NiftiCase]) -> None:
    """The same patient id twice (e.g. in both layouts) is refused, naming both files."""
    seen: dict[str, Path] = {}
    for case in cases:
        if case.patient_id in seen:
            raise SarcomaSegError(
                f"{where_of(case.ct, case.patient_id)}: patient also in {seen[case.patient_id]}"
            )
        seen[case.patient_id] = case.ct


def _nifti_cases(folder: Path, masks: bool = True) -> list[NiftiCase]:
    """All patients of a NIfTI folder in either layout (both may be present), by patient id;
    masks False: patients without a mask too."""
    folder = require_folder(folder)
    cases = _ibsi_cases(folder, masks) + _nnunet_cases(folder, masks)
    if not cases:
        raise SarcomaSegError(
            f"{folder}: no recognised NIfTI layout (expected <PATIENT>/{IBSI_CT}.nii.gz + "
            f"{IBSI_MASK}.nii.gz, or {NNUNET_IMAGES}/<case>_0000.nii.gz + "
            f"{NNUNET_LABELS}/<case>.nii.gz)"
        )
    _refuse_duplicate_patients(cases)
    check_links(cases, folder)
    return sorted(cases, key=lambda c: c.patient_id)


def check_links(cases: list[NiftiCase], folder: Path) -> None:
    """Every file of every case inside the folder: a link (to a file or a patient folder) that
    leads out of it is refused before anything is read."""
    for case in cases:
        for path in (case.ct, case.mask, case.pet):
            if path is not None:
                check_inside(path, folder)


def nifti_inputs(folder: Path) -> list[Path]:
    """The files read_nifti reads (CT, mask, PET, nnU-Net dataset.json), sorted."""
    cases = _nifti_cases(folder)
    paths = {p for c in cases for p in (c.ct, c.mask, c.pet) if p is not None}
    meta = Path(folder) / NNUNET_JSON
    if (Path(folder) / NNUNET_IMAGES).is_dir() and meta.is_file():
        paths.add(meta)  # it decides which channel is PET
    return sorted(paths)


def check_nifti_header(image: nib.Nifti1Image, where: str) -> None:
    """Refuse, from the header alone, a NIfTI whose data would be empty or too large to
    allocate, or whose affine cannot place voxels in space."""
    shape = tuple(int(n) for n in image.shape)
    if 0 in shape:
        raise SarcomaSegError(f"{where}: an axis of length 0, shape {shape}")
    voxels = int(np.prod(shape, dtype=object))  # Python ints: a hostile header cannot overflow
    if voxels > MAX_VOXELS:
        raise SarcomaSegError(
            f"{where}: header claims shape {shape}, {voxels} voxels, more than the "
            f"{MAX_VOXELS} a volume may have; refusing it before reading"
        )
    affine = np.asarray(image.affine, dtype=float)
    if not np.isfinite(affine).all():
        raise SarcomaSegError(f"{where}: affine holds NaN or infinite values")
    # a voxel must have a volume: a zero or singular affine cannot place voxels in space (nibabel
    # fails on it with an OrientationError); 1e-6 mm3 is far below any scanner's voxel
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise SarcomaSegError(
            f"{where}: affine is singular (voxel axes {np.round(affine[:3, :3], 4).tolist()} "
            "span no volume); cannot place the voxels in space"
        )
    axial = np.flatnonzero(io_orientation(affine)[:, 0] == 2)  # the voxel axis closest to S
    slices = shape[int(axial[0])] if len(axial) and axial[0] < len(shape) else 0
    if slices > MAX_SLICES:
        raise SarcomaSegError(
            f"{where}: header claims {slices} slices, more than the {MAX_SLICES} a volume may "
            "have; refusing it before reading"
        )


def inflated(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    """A gzip NIfTI whose header passed check_nifti_header, with its data inflated into memory by
    one zlib call, or the image as it is (not gzip, or anything unusual: several gzip members,
    trailing data, a damaged stream, which nibabel's own reader then reports). Same bytes, same
    arrays; but Python's gzip takes the GIL back every 8 kB of input, and one call leaves it free
    throughout, so predict's model loading in another thread runs meanwhile."""
    if not str(path).lower().endswith(".gz"):
        return image
    offset = getattr(image.dataobj, "offset", None)  # where the file's data start (vox_offset)
    if offset is None:
        return image
    # the header's own size for the data; a longer stream is left to nibabel (bounded output)
    size = int(offset) + int(np.prod(image.shape, dtype=object)) * image.get_data_dtype().itemsize
    # deflate never grows data by more than ~0.1%: a larger file holds something else, and is
    # not read into memory whole
    if Path(path).stat().st_size > size + size // 100 + GZIP_SLACK:
        return image
    inflater = zlib.decompressobj(wbits=31)  # gzip framing: zlib checks the CRC-32 and length
    try:
        raw = inflater.decompress(Path(path).read_bytes(), size + 1)
    except zlib.error:
        return image
    if not inflater.eof or inflater.unused_data or len(raw) < size:
        return image
    return type(image).from_bytes(raw)


def open_volume(path: Path, where: str) -> nib.Nifti1Image:
    """A 3D NIfTI image of real numbers, its header checked (check_nifti_header) before any data
    are read and gzip data inflated in one call (inflated); `where` names it in errors."""
    image = nib.load(path, mmap=False)  # data are copied anyway; no map keeps the file open
    check_nifti_header(image, where)
    image = inflated(image, path)
    if len(image.shape) == 4 and image.shape[3] == 1:
        image = nib.squeeze_image(image)  # some converters write (x, y, z, 1)
    if len(image.shape) != 3:
        raise SarcomaSegError(f"{where}: not 3D (shape {image.shape}); a volume must be 3D")
    if image.get_data_dtype().kind not in "biuf":  # complex or RGB would be cast silently
        raise SarcomaSegError(f"{where}: stored as {image.get_data_dtype()}, not real numbers")
    return image


def _load_canonical(path: Path, patient_id: str, labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a 3D NIfTI file reoriented to RAS+; float32, or raw dtype for labels."""
    where = where_of(path, patient_id)
    try:
        image = nib.as_closest_canonical(open_volume(path, where))  # one axis order and sign
        # labels keep their stored values (scaled if the header says so) so that non-integer
        # or negative labels can be refused; images are float32 with scl_slope/inter applied
        data = np.asanyarray(image.dataobj) if labels else image.get_fdata(dtype=np.float32)
    except SarcomaSegError:
        raise  # already names the file; it is a ValueError, so it must not be caught below
    except NIFTI_ERRORS as exc:
        raise SarcomaSegError(
            f"{where}: unreadable or truncated NIfTI file ({one_line(exc)})"
        ) from exc
    return np.asarray(data), image.affine


def pet_coverage(path: Path, patient_id: str, ct_shape: tuple, ct_affine: np.ndarray):
    """(PET resampled onto the canonical CT grid, share of CT voxels the PET covers)."""
    pet, pet_affine = _load_canonical(path, patient_id, labels=False)
    return pet_onto_grid(pet, pet_affine, where_of(path, patient_id), ct_shape, ct_affine)


def _read_case(folder: Path, case: NiftiCase) -> Volume:
    """One NIfTI patient as a validated Volume."""
    pid = case.patient_id
    ct, ct_affine = _load_canonical(case.ct, pid, labels=False)
    raw, mask_affine = _load_canonical(case.mask, pid, labels=True)
    check_same_grid((ct, ct_affine), (raw, mask_affine), where_of(case.mask, pid))
    check_labels(raw, where_of(case.mask, pid))
    pet, covered = pet_coverage(case.pet, pid, ct.shape, ct_affine) if case.pet else (None, 1.0)
    provenance = f"{folder.resolve().name}/{case.ct.relative_to(folder).as_posix()}"
    return canonical_volume(pid, ct, raw, pet, covered, ct_affine, provenance)


def cohort_cases(folder: Path) -> list[NiftiCase]:
    """predict --cohort: every patient of a NIfTI folder in either layout, masks optional; []
    where the folder has neither layout (a DICOM tree, say)."""
    cases = _ibsi_cases(folder, masks=False) + _nnunet_cases(folder, masks=False)
    _refuse_duplicate_patients(cases)
    check_links(cases, folder)
    return sorted(cases, key=lambda c: c.patient_id)


def read_truth(case: NiftiCase, shape: tuple[int, ...]) -> np.ndarray | None:
    """A cohort patient's truth mask on the internal canonical grid (None without one),
    refused unless it has the CT's shape."""
    if case.mask is None:
        return None
    raw, _ = _load_canonical(case.mask, case.patient_id, labels=True)
    check_labels(raw, where_of(case.mask, case.patient_id))
    truth = internal_axes(raw > 0).astype(np.uint8)
    if truth.shape != tuple(shape):
        raise SarcomaSegError(
            f"{where_of(case.mask, case.patient_id)}: mask shape {truth.shape} != CT {shape}"
        )
    return truth


def read_nifti(folder: Path) -> list[Volume]:
    """Every patient of a NIfTI folder (per-patient or nnU-Net layout), by patient id."""
    folder = Path(folder)
    return [_read_case(folder, case) for case in _nifti_cases(folder)]


def read_nifti_scan(path: Path, pet: PetReader | None = None) -> Scan:
    """A 3D NIfTI CT in HU (and PET, read onto its grid by `pet`: scans.pet_reader)."""
    try:
        image = open_volume(path, str(path))
    except SarcomaSegError:
        raise
    except NIFTI_ERRORS as exc:
        raise SarcomaSegError(f"{path}: unreadable NIfTI file ({one_line(exc)})") from exc
    return canonical_scan(str(path), image, pet)
