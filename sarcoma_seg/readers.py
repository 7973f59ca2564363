"""Local data sources read into Volumes: NIfTI folders (per-patient or nnU-Net) and PNG slices.

Every reader validates the whole input before it returns anything; each problem is one
SarcomaSegError line naming the file and the patient.

NIfTI arrays come out as (slices, rows, cols) of the RAS+ canonical grid: slices run inferior
to superior, rows posterior to anterior, cols patient-left to patient-right. (Shown with
matplotlib's imshow, anterior is at the bottom and the patient's left on the left: not the
radiological view; flip rows and cols for display.)

PNG slices keep each image's own row and column order; nothing in the files says which way the
patient lies. In the real sts-slices the table (posterior) is at the bottom, so rows run anterior
to posterior, the reverse of the NIfTI rows, and the slice index runs from the feet up.
"""

import json
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import io_orientation
from PIL import Image
from scipy import ndimage

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.volumes import (
    MAX_PNG_PIXELS,
    MAX_SLICES,
    MAX_VOXELS,
    MIN_PET_COVERAGE,
    PET_COVERAGE_WARN,
    Volume,
    check_label_count,
    check_volume,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IBSI_CT, IBSI_MASK, IBSI_PET = "CT_image", "CT_mask", "PET_image"  # PET_mask is not used
NNUNET_IMAGES, NNUNET_LABELS, NNUNET_JSON = "imagesTr", "labelsTr", "dataset.json"
CHANNEL_NAME = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")  # nnU-Net: <case>_0000
# CT and mask grids must agree to within this many mm at every corner: far below any CT voxel
# (0.5-5 mm), far above the float32 rounding of header affines (~1e-4 mm at 1 m from the origin)
GRID_TOL_MM = 0.01
NIFTI_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError)

IMAGE_DIR, MASK_DIR = "ct_images", "mask_images"  # ct_images<suffix> pairs with mask_images<suffix>
PNG_NAME = re.compile(r"(?P<patient>.+)_(?P<index>\d+)_\.png")  # <PATIENT>_<SLICE>_.png
# The source file (lab_petct_vox_5.00mm.h5) has 5 mm isotropic voxels; the PNGs were resized to
# 256x256 from an unknown in-plane size, so the in-plane 5 mm is approximate.
SLICE_SPACING_MM = (5.0, 5.0, 5.0)
# PIL raises SyntaxError on bad chunks, DecompressionBombError on sizes our header check missed
PNG_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_MODES = ("L",)  # 8-bit grayscale only: anything else is not the png8 the units promise
MASK_MODES = ("L", "1", "I;16", "I")


@dataclass(frozen=True)
class NiftiCase:
    """The files of one patient in a NIfTI folder."""

    patient_id: str
    ct: Path
    mask: Path
    pet: Path | None


@dataclass(frozen=True)
class SliceFile:
    """One PNG image / mask pair of one patient."""

    patient_id: str
    index: int
    image: Path
    mask: Path


def _where(path: Path, patient_id: str) -> str:
    """The prefix of an error message: file and patient."""
    return f"{path} (patient {patient_id})"


def _one_line(exc: Exception) -> str:
    """A library's error text on one line (nibabel's messages span several)."""
    return " ".join(str(exc).split())


def _visible(folder: Path) -> list[Path]:
    """Entries of a folder, sorted, without hidden ones (.DS_Store, ._ files from macOS)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _require_folder(folder: Path) -> Path:
    """The folder, if it exists and holds anything."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SarcomaSegError(f"{folder}: data folder not found")
    if not _visible(folder):
        raise SarcomaSegError(f"{folder}: data folder is empty")
    return folder


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
        raise SarcomaSegError(f"{_where(found[0], patient_id)}: duplicated by {found[1].name}")
    return found[0] if found else None


def _ibsi_cases(folder: Path) -> list[NiftiCase]:
    """Layout (a): <PATIENT>/CT_image.nii.gz + CT_mask.nii.gz (+ PET_image.nii.gz)."""
    cases = []
    for sub in (p for p in _visible(folder) if p.is_dir()):
        pid = sub.name
        ct, mask, pet = (_one_nifti(sub, stem, pid) for stem in (IBSI_CT, IBSI_MASK, IBSI_PET))
        if ct is None and mask is None and pet is None:
            continue  # not a patient folder (e.g. imagesTr of the other layout)
        if ct is None:
            raise SarcomaSegError(f"{_where(mask or pet, pid)}: no {IBSI_CT}.nii.gz beside it")
        if mask is None:
            raise SarcomaSegError(f"{_where(ct, pid)}: no {IBSI_MASK}.nii.gz beside it")
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
            f"{path}: not a readable nnU-Net dataset.json ({_one_line(exc)})"
        ) from exc
    return pet[0] if pet and pet[0] != 0 else None


def _nnunet_files(folder: Path, with_channel: bool) -> dict[str, dict[int, Path]]:
    """case -> channel -> file in imagesTr (with_channel) or labelsTr (channel 0)."""
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in _visible(folder):
        stem = _nifti_stem(path)
        if stem is None:
            continue  # not a NIfTI file: notes and the like do not feed the reader
        match = CHANNEL_NAME.fullmatch(stem) if with_channel else None
        # MSD images carry no _0000 suffix: a bare <case>.nii.gz is channel 0
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        if channel in found[case]:
            raise SarcomaSegError(f"{_where(path, case)}: duplicates {found[case][channel]}")
        found[case][channel] = path
    return found


def _nnunet_cases(folder: Path) -> list[NiftiCase]:
    """Layout (b): imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz; <case> is the patient."""
    images_dir, labels_dir = folder / NNUNET_IMAGES, folder / NNUNET_LABELS
    if not images_dir.is_dir() and not labels_dir.is_dir():
        return []
    for present, absent in ((images_dir, labels_dir), (labels_dir, images_dir)):
        if not absent.is_dir():
            raise SarcomaSegError(f"{present}: no {absent.name} folder beside it")
    images, labels = _nnunet_files(images_dir, True), _nnunet_files(labels_dir, False)
    pet_channel = _pet_channel(folder / NNUNET_JSON)
    for case in sorted(set(images) | set(labels)):
        if case not in labels:
            first = next(iter(images[case].values()))
            raise SarcomaSegError(f"{_where(first, case)}: no label {case}.nii.gz in {labels_dir}")
        if case not in images:
            raise SarcomaSegError(f"{_where(labels[case][0], case)}: no image in {images_dir}")
        if 0 not in images[case]:
            first = next(iter(images[case].values()))
            raise SarcomaSegError(f"{_where(first, case)}: no channel 0 image {case}_0000.nii.gz")
    return [
        NiftiCase(case, images[case][0], labels[case][0], images[case].get(pet_channel))
        for case in sorted(images)
    ]


def _refuse_duplicate_patients(cases: list[NiftiCase]) -> None:
    """The same patient id twice (e.g. in both layouts) is refused, naming both files."""
    seen: dict[str, Path] = {}
    for case in cases:
        if case.patient_id in seen:
            raise SarcomaSegError(
                f"{_where(case.ct, case.patient_id)}: patient also in {seen[case.patient_id]}"
            )
        seen[case.patient_id] = case.ct


def _nifti_cases(folder: Path) -> list[NiftiCase]:
    """All patients of a NIfTI folder in either layout (both may be present), by patient id."""
    folder = _require_folder(folder)
    cases = _ibsi_cases(folder) + _nnunet_cases(folder)
    if not cases:
        raise SarcomaSegError(
            f"{folder}: no recognised NIfTI layout (expected <PATIENT>/{IBSI_CT}.nii.gz + "
            f"{IBSI_MASK}.nii.gz, or {NNUNET_IMAGES}/<case>_0000.nii.gz + "
            f"{NNUNET_LABELS}/<case>.nii.gz)"
        )
    _refuse_duplicate_patients(cases)
    return sorted(cases, key=lambda c: c.patient_id)


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


def _load_canonical(path: Path, patient_id: str, labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a 3D NIfTI file reoriented to RAS+; float32, or raw dtype for labels."""
    try:
        image = nib.load(path, mmap=False)  # data are copied anyway; no map keeps the file open
        check_nifti_header(image, _where(path, patient_id))  # before any data are read
        if len(image.shape) == 4 and image.shape[3] == 1:
            image = nib.squeeze_image(image)  # some converters write (x, y, z, 1)
        if len(image.shape) != 3:
            raise SarcomaSegError(f"{_where(path, patient_id)}: not 3D, shape {image.shape}")
        if image.get_data_dtype().kind not in "biuf":  # complex or RGB would be cast silently
            raise SarcomaSegError(
                f"{_where(path, patient_id)}: stored as {image.get_data_dtype()}, not real numbers"
            )
        image = nib.as_closest_canonical(image)  # every patient on the same axis order/signs
        # labels keep their stored values (scaled if the header says so) so that non-integer
        # or negative labels can be refused; images are float32 with scl_slope/inter applied
        data = np.asanyarray(image.dataobj) if labels else image.get_fdata(dtype=np.float32)
    except SarcomaSegError:
        raise  # already names the file; it is a ValueError, so it must not be caught below
    except NIFTI_ERRORS as exc:
        raise SarcomaSegError(
            f"{_where(path, patient_id)}: unreadable or truncated NIfTI file ({_one_line(exc)})"
        ) from exc
    return np.asarray(data), image.affine


def internal_axes(array: np.ndarray) -> np.ndarray:
    """(i, j, k) of a canonical NIfTI array -> (slices, rows, cols), contiguous."""
    return np.ascontiguousarray(array.transpose(2, 1, 0))


def canonical_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along (slices, rows, cols) of a canonical affine."""
    # taken from the affine, not pixdim: the affine is what places voxels in the world
    sizes = voxel_sizes(affine)
    return float(sizes[2]), float(sizes[1]), float(sizes[0])


def _grid_offset_mm(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """How far apart two affines put the corner voxels of a grid of this shape, in mm."""
    corners = np.array([[*c, 1] for c in product(*((0, n - 1) for n in shape))], float).T
    return float(np.abs((a - b) @ corners).max())


def _check_same_grid(ct: tuple, mask: tuple, where: str) -> None:
    """Refuse a mask whose shape, spacing or position differs from its CT."""
    (ct_data, ct_affine), (mask_data, mask_affine) = ct, mask
    if ct_data.shape != mask_data.shape:
        raise SarcomaSegError(
            f"{where}: CT shape {ct_data.shape[::-1]} and mask shape {mask_data.shape[::-1]} "
            "differ (slices, rows, cols)"
        )
    offset = _grid_offset_mm(ct_affine, mask_affine, ct_data.shape)
    if offset > GRID_TOL_MM:
        ct_mm = tuple(round(s, 4) for s in canonical_spacing(ct_affine))
        mask_mm = tuple(round(s, 4) for s in canonical_spacing(mask_affine))
        raise SarcomaSegError(
            f"{where}: CT and mask grids differ by up to {offset:.3g} mm "
            f"(spacing {ct_mm} vs {mask_mm} mm, affines differ)"
        )


def _check_labels(raw: np.ndarray, where: str) -> None:
    """Refuse masks holding NaN, infinite, fractional or negative values."""
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise SarcomaSegError(f"{where}: mask holds NaN or infinite voxels")
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise SarcomaSegError(f"{where}: mask values are not integer labels")
    if raw.size and raw.min() < 0:
        raise SarcomaSegError(f"{where}: mask holds negative values, not labels")
    check_label_count(raw, where)


def _inside_extent(to_src: np.ndarray, out_shape: tuple, src_shape: tuple) -> np.ndarray:
    """Which output voxel centres fall inside the source grid's physical extent."""
    grid = np.ogrid[tuple(slice(0, n) for n in out_shape)]
    inside = np.ones(out_shape, dtype=bool)
    for axis in range(3):
        # zero terms are skipped: for axis-aligned grids coord stays a thin broadcastable array
        terms = [to_src[axis, e] * grid[e] for e in range(3) if to_src[axis, e] != 0]
        coord = to_src[axis, 3] + sum(terms)
        # a voxel covers half a voxel either side of its centre
        inside &= (coord >= -0.5) & (coord <= src_shape[axis] - 0.5)
    return inside


def _linear_along(src: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """src linearly interpolated at source positions coords along one axis; positions beyond
    the edge centres take the edge value (scipy's mode="nearest")."""
    n = src.shape[axis]
    clamped = np.clip(coords, 0, n - 1)
    low = np.minimum(np.floor(clamped).astype(np.intp), max(n - 2, 0))
    high = np.minimum(low + 1, n - 1)
    weight = clamped - low
    # as a (len(coords), n) matrix with two weights a row: one BLAS product along the axis is
    # ~10x faster than gathering the neighbours (a 128 px PET onto a 512 px CT: 0.2 s, not 2.3 s)
    rows = np.arange(len(coords))
    matrix = np.zeros((len(coords), n), src.dtype)
    matrix[rows, low] = 1 - weight
    matrix[rows, high] += weight  # high == low at a 1-voxel axis: the two weights add up to 1
    return np.moveaxis(np.tensordot(matrix, src, axes=(1, axis)), 0, axis)


def _resample_axis_aligned(src: np.ndarray, to_src: np.ndarray, out_shape: tuple) -> np.ndarray:
    """Trilinear resampling for grids whose axes are parallel, as 1D passes: the same values as
    affine_transform(order=1, mode="nearest"), several times faster on a 512 x 512 CT grid; an
    axis both grids share (PET already on the CT grid) costs nothing."""
    # a copy (the caller zeroes voxels outside the source), in a float type for the weights
    out = src.astype(src.dtype if src.dtype.kind == "f" else np.float32)
    # shrinking axes first, growing ones last: every pass works on the smallest array it can
    for axis in sorted(range(3), key=lambda a: out_shape[a] / src.shape[a]):
        coords = to_src[axis, axis] * np.arange(out_shape[axis]) + to_src[axis, 3]
        index = np.arange(src.shape[axis])
        if len(coords) == len(index) and np.allclose(coords, index, rtol=0, atol=1e-6):
            continue  # the same sampling along this axis
        out = _linear_along(out, axis, coords)
    return np.ascontiguousarray(out)  # slice by slice downstream (OpenCV)


def _resample_onto(src: np.ndarray, src_affine: np.ndarray, out_shape: tuple, out_affine):
    """Linear resampling of src onto another grid through world coordinates; outside is 0.
    Returns the values and the share of output voxels inside the source grid."""
    to_src = np.linalg.inv(src_affine) @ out_affine  # output voxel index -> source voxel index
    # "nearest" only extends the edge voxel over its own half-voxel: a PET grid whose edge
    # centre lies 0.02 mm beyond the CT's (as in IBSI) must not lose a whole CT slice; points
    # truly outside the source are zeroed from _inside_extent
    matrix = to_src[:3, :3]
    if np.count_nonzero(matrix - np.diag(np.diag(matrix))) == 0:
        values = _resample_axis_aligned(src, to_src, out_shape)
    else:
        values = ndimage.affine_transform(
            src, matrix, to_src[:3, 3], output_shape=out_shape, order=1, mode="nearest"
        )
    inside = _inside_extent(to_src, out_shape, src.shape)
    values[~inside] = 0.0
    return values, float(inside.mean())


def pet_coverage(path: Path, patient_id: str, ct_shape: tuple, ct_affine: np.ndarray):
    """(PET resampled onto the canonical CT grid, share of CT voxels the PET covers)."""
    pet, pet_affine = _load_canonical(path, patient_id, labels=False)
    return pet_onto_grid(pet, pet_affine, _where(path, patient_id), ct_shape, ct_affine)


def pet_onto_grid(
    pet: np.ndarray, pet_affine: np.ndarray, where: str, ct_shape: tuple, ct_affine: np.ndarray
) -> tuple[np.ndarray, float]:
    """(a canonical PET array resampled onto the canonical CT grid, share of CT voxels it
    covers), refused if it holds NaN or covers too little."""
    if not np.isfinite(pet).all():
        raise SarcomaSegError(f"{where}: PET holds NaN or infinite voxels")
    pet, covered = _resample_onto(pet, pet_affine, ct_shape, ct_affine)
    if covered == 0:
        raise SarcomaSegError(f"{where}: PET does not overlap the CT grid")
    if covered < MIN_PET_COVERAGE:
        raise SarcomaSegError(
            f"{where}: PET covers only {covered:.2%} of the CT grid, less "
            f"than the {MIN_PET_COVERAGE:.0%} required"
        )
    return pet, covered


def read_pet_onto(
    path: Path, patient_id: str, ct_shape: tuple, ct_affine: np.ndarray
) -> np.ndarray:
    """A PET image resampled onto the (canonical) CT grid, refused if it covers too little."""
    return pet_coverage(path, patient_id, ct_shape, ct_affine)[0]


def _read_case(folder: Path, case: NiftiCase) -> Volume:
    """One NIfTI patient as a validated Volume."""
    pid = case.patient_id
    ct, ct_affine = _load_canonical(case.ct, pid, labels=False)
    raw, mask_affine = _load_canonical(case.mask, pid, labels=True)
    _check_same_grid((ct, ct_affine), (raw, mask_affine), _where(case.mask, pid))
    _check_labels(raw, _where(case.mask, pid))
    pet, covered = pet_coverage(case.pet, pid, ct.shape, ct_affine) if case.pet else (None, 1.0)
    raw = internal_axes(raw)
    provenance = f"{folder.resolve().name}/{case.ct.relative_to(folder).as_posix()}"
    volume = Volume(
        pid,
        internal_axes(ct),
        raw > 0,  # any label > 0 is tumour
        internal_axes(pet) if pet is not None else None,
        canonical_spacing(ct_affine),
        provenance,
    )
    if covered < PET_COVERAGE_WARN:
        volume.warnings.append(f"PET covers only {covered:.1%} of the CT grid")
    check_volume(volume, raw)
    volume.mask = volume.mask.astype(np.uint8)
    return volume


def read_nifti(folder: Path) -> list[Volume]:
    """Every patient of a NIfTI folder (per-patient or nnU-Net layout), by patient id."""
    folder = Path(folder)
    return [_read_case(folder, case) for case in _nifti_cases(folder)]


def _slice_folder_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(ct_images<suffix>, mask_images<suffix>) folder pairs, refusing unpaired ones."""
    subdirs = [p for p in _visible(folder) if p.is_dir()]
    images = {p.name[len(IMAGE_DIR) :]: p for p in subdirs if p.name.startswith(IMAGE_DIR)}
    masks = {p.name[len(MASK_DIR) :]: p for p in subdirs if p.name.startswith(MASK_DIR)}
    for suffix in sorted(set(images) ^ set(masks)):
        present, want = (images, MASK_DIR) if suffix in images else (masks, IMAGE_DIR)
        raise SarcomaSegError(f"{present[suffix]}: no {want}{suffix} folder beside it")
    return [(images[s], masks[s]) for s in sorted(images)]


def _pair_slice_files(image_dir: Path, mask_dir: Path) -> list[SliceFile]:
    """The image / mask pairs of one folder pair, refusing unpaired or misnamed PNGs."""
    image_names = {p.name for p in _visible(image_dir) if p.suffix.lower() == ".png"}
    mask_names = {p.name for p in _visible(mask_dir) if p.suffix.lower() == ".png"}
    pairs = []
    for name in sorted(image_names | mask_names):
        path = (image_dir if name in image_names else mask_dir) / name
        match = PNG_NAME.fullmatch(name)
        if match is None:
            raise SarcomaSegError(f"{path}: name is not <PATIENT>_<SLICE>_.png")
        pid = match["patient"]
        if name not in mask_names:
            raise SarcomaSegError(f"{_where(path, pid)}: no mask {mask_dir / name}")
        if name not in image_names:
            raise SarcomaSegError(f"{_where(path, pid)}: no image {image_dir / name}")
        pairs.append(SliceFile(pid, int(match["index"]), image_dir / name, mask_dir / name))
    return pairs


def _slice_files(folder: Path) -> list[SliceFile]:
    """Every slice of a PNG folder, pooled over all folder pairs, by patient and slice index."""
    folder = _require_folder(folder)
    folder_pairs = _slice_folder_pairs(folder)
    if not folder_pairs:
        raise SarcomaSegError(
            f"{folder}: no recognised PNG layout (expected {IMAGE_DIR}<suffix>/ + "
            f"{MASK_DIR}<suffix>/ holding <PATIENT>_<SLICE>_.png)"
        )
    found: dict[tuple[str, int], SliceFile] = {}
    for image_dir, mask_dir in folder_pairs:
        for item in _pair_slice_files(image_dir, mask_dir):
            key = (item.patient_id, item.index)
            # a slice in two folders is refused even when identical: the original folders are
            # disjoint, so a repeat means a bad merge, and refusing needs no pixel comparison
            if key in found:
                raise SarcomaSegError(
                    f"{_where(item.image, item.patient_id)}: slice {item.index} also in "
                    f"{found[key].image}"
                )
            found[key] = item
    if not found:
        raise SarcomaSegError(
            f"{folder}: no PNG slices in {', '.join(p.name for p, _ in folder_pairs)}"
        )
    return sorted(found.values(), key=lambda s: (s.patient_id, s.index))


def slice_files(folder: Path) -> list[SliceFile]:
    """Every image / mask pair of a PNG folder with its patient and slice index."""
    return _slice_files(folder)


def slice_inputs(folder: Path) -> list[Path]:
    """The PNG files read_slices reads, images and masks, sorted."""
    return sorted(p for s in _slice_files(folder) for p in (s.image, s.mask))


def slice_indices(folder: Path) -> dict[str, list[int]]:
    """patient -> the true slice indices behind each row of its stacked volume."""
    indices: dict[str, list[int]] = defaultdict(list)
    for item in _slice_files(folder):
        indices[item.patient_id].append(item.index)
    return dict(indices)


def check_png_size(path: Path, patient_id: str) -> None:
    """Refuse a PNG whose header (IHDR) declares more than MAX_PNG_PIXELS, before decoding."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)  # signature, IHDR length and type, width, height
    except OSError as exc:
        where = _where(path, patient_id)
        raise SarcomaSegError(f"{where}: unreadable PNG ({exc.strerror})") from exc
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return  # not a PNG header: PIL (PNG only) refuses it below with its own reason
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width * height > MAX_PNG_PIXELS:
        raise SarcomaSegError(
            f"{_where(path, patient_id)}: PNG header declares {width} x {height} pixels, more "
            f"than the {MAX_PNG_PIXELS} a slice may have; refusing it before decoding"
        )


def read_png(path: Path, patient_id: str, modes: tuple[str, ...]) -> np.ndarray:
    """A grayscale PNG as a 2D array, refusing unreadable files and unexpected modes."""
    check_png_size(path, patient_id)
    try:
        # PNG only: PIL's other decoders (EPS runs Ghostscript) have no business here
        with Image.open(path, formats=["PNG"]) as image:
            image.load()  # decode now, so that truncated data fails here
            mode, array = image.mode, np.asarray(image)
    except PNG_ERRORS as exc:
        raise SarcomaSegError(
            f"{_where(path, patient_id)}: unreadable or truncated PNG ({_one_line(exc)})"
        ) from exc
    if mode not in modes:
        raise SarcomaSegError(
            f"{_where(path, patient_id)}: PNG mode {mode}, expected grayscale {'/'.join(modes)}"
        )
    return array


def _stack_patient(folder: Path, patient_id: str, items: list[SliceFile]) -> Volume:
    """One patient's slices, stacked in slice-index order, as a validated Volume."""
    if len(items) > MAX_SLICES:
        raise SarcomaSegError(
            f"{_where(items[0].image.parent, patient_id)}: {len(items)} slices, more than the "
            f"{MAX_SLICES} a volume may have"
        )
    images, labels = [], []
    for item in items:
        image = read_png(item.image, patient_id, IMAGE_MODES)
        if len(items) * image.size > MAX_VOXELS:
            raise SarcomaSegError(
                f"{_where(item.image, patient_id)}: {len(items)} slices of {image.shape} make "
                f"more than the {MAX_VOXELS} voxels a volume may have"
            )
        label = read_png(item.mask, patient_id, MASK_MODES)
        if label.shape != image.shape:
            raise SarcomaSegError(
                f"{_where(item.mask, patient_id)}: mask size {label.shape} differs from image "
                f"size {image.shape} (rows, cols)"
            )
        if images and image.shape != images[0].shape:
            raise SarcomaSegError(
                f"{_where(item.image, patient_id)}: size {image.shape} differs from "
                f"{items[0].image.name} size {images[0].shape} (rows, cols) of the same patient"
            )
        _check_labels(label, _where(item.mask, patient_id))
        images.append(image)
        labels.append(label)
    raw = np.stack(labels)
    folders = sorted({item.image.parent.name for item in items})
    # Rows of the stack are the slices that exist, in index order: a gap in the indices is
    # closed up, so neighbours across it are not 5 mm apart; slice_indices() gives the true ones.
    volume = Volume(
        patient_id,
        np.stack(images).astype(np.float32),  # 0..255 intensities, not HU
        raw > 0,  # 0, 1 and 2 occur: any label > 0 is tumour
        None,
        SLICE_SPACING_MM,
        f"{folder.resolve().name}/{{{','.join(folders)}}}/{patient_id}_*_.png",
        units="png8",
    )
    check_volume(volume, raw)
    volume.mask = volume.mask.astype(np.uint8)
    return volume


def read_slices(folder: Path) -> list[Volume]:
    """Every patient of a PNG slice folder, all folder pairs pooled, by patient id."""
    folder = Path(folder)
    by_patient: dict[str, list[SliceFile]] = defaultdict(list)
    for item in _slice_files(folder):
        by_patient[item.patient_id].append(item)
    return [_stack_patient(folder, pid, items) for pid, items in sorted(by_patient.items())]
