"""DICOM: CT series, RT Structure Sets (RTSTRUCT) and PET series found by their tags, read into
Volumes on the canonical grid of the nifti source; predict's CT series reader and RTSTRUCT writer.

Files are grouped by PatientID, series by SeriesInstanceUID; an RTSTRUCT belongs to the CT series
it references (RTReferencedSeriesSequence), so folder names and layout do not matter: the shared
layout (STS_xxx/CT/image, STS_xxx/CT/mask/RS.dcm, STS_xxx/PET/image) and a flat folder of mixed
files read the same. Every header is read and checked (stop_before_pixels) before pixel data.

Contours become a mask by the pixel-centre-inside rule: a contour's points (patient mm) are
mapped to pixel indices of the slice it lies on, and a pixel is tumour when its centre is inside
an odd number of the slice's contours (even-odd: a contour inside another is a hole).
"""

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import regex  # data.roi with a timeout (re has none): ROI names come from untrusted files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from sarcoma_seg.config import MAX_SPACING_MM
from sarcoma_seg.errors import SarcomaSegError, one_line
from sarcoma_seg.io.common import Scan, check_inside, where_of
from sarcoma_seg.io.grid import (
    PetReader,
    canonical_scan,
    canonical_volume,
    internal_axes,
    pet_onto_grid,
)
from sarcoma_seg.volumes import MAX_SLICES, MAX_VOXELS, Volume, check_patient_id

SKIP_NAMES = {"DICOMDIR"}  # index files that sit beside a series and hold no pixels
IMAGE_MODALITIES = ("CT", "PT")
# objects a TCIA download or a planning export puts beside the images; none holds CT pixels
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "SEG", "SR", "PR", "KO", "DOC"}
DICOM_ERRORS = (InvalidDicomError, AttributeError, ValueError, TypeError, OSError, EOFError)
# ImageOrientationPatient cosines within this of 0 or 1 count as axis-aligned (DS values carry
# ~1e-6 rounding; a gantry tilt of 0.1 degree already moves them by 2e-3)
# a tracer's physical half-life: F-18 6586 s, C-11 1223 s, Ga-68 4063 s, Zr-89 ~2.8 days
MIN_HALF_LIFE_S, MAX_HALF_LIFE_S = 60.0, 1e7
# body weight (g) / decayed dose (Bq): ~70 kg / 370 MBq = 2e-4; a tag off by orders of magnitude
# (a dose of 1e308) would make the PET all zeros or all infinities without a word
SUV_FACTOR_RANGE = (1e-9, 1.0)
ROI_MATCH_SECONDS = 1.0
# contours of one ROI: one or a few per slice of at most MAX_SLICES slices in real structure sets
MAX_CONTOURS = 20_000  # data.roi on one ROI name; a plain pattern takes microseconds
AXIS_TOL = 1e-4
# slice positions may wander this much (mm) off a regular grid, or off the slice normal, before
# a series counts as unevenly spaced or tilted: DS rounding is ~1e-5 mm, a missing slice ~3 mm
POSITION_TOL_MM = 0.05
# a contour belongs to the slice whose position is within this share of the slice step: closer
# to one slice than to any other by a wide margin, and far above DS rounding
CONTOUR_SLICE_TOL = 0.25
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RTSTRUCT_NAME = "rtstruct.dcm"  # written beside predict's mask for a DICOM input


@dataclass
class Series:
    """The files of one CT or PET series with their headers (no pixel data read)."""

    uid: str
    modality: str
    patient_id: str
    files: list[Path] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)


@dataclass
class Grid:
    """A series sorted along its slice normal, its geometry checked."""

    series: Series
    files: list[Path]  # sorted by position along the normal
    headers: list[Dataset]
    affine: np.ndarray  # NIfTI-style RAS affine of the (col, row, slice) voxel indices
    positions: np.ndarray  # mm along the normal, ascending
    step: float
    pixel_mm: tuple[float, float]  # (row spacing, column spacing)
    row_dir: np.ndarray  # direction of increasing column index (LPS)
    col_dir: np.ndarray  # direction of increasing row index (LPS)
    normal: np.ndarray
    shape: tuple[int, int, int]  # (slices, rows, cols)


@dataclass
class DicomPatient:
    """One patient's CT series, PET series and RTSTRUCTs, as found in the folder."""

    patient_id: str
    ct: list[Series] = field(default_factory=list)
    pet: list[Series] = field(default_factory=list)
    structures: list[tuple[Path, Dataset]] = field(default_factory=list)


def _candidate_files(folder: Path) -> list[Path]:
    """Every visible file under folder, sorted; a link that leads out of the folder (to a file
    or a folder) is refused before it is read, and a link to a folder is never walked silently."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_symlink():
            check_inside(path, folder)
            if path.is_dir():  # rglob does not walk into it: say so rather than drop it
                raise SarcomaSegError(f"{path}: a link to a folder; move or copy the folder in")
        if path.is_file() and path.name not in SKIP_NAMES:
            found.append(path)
    return found


def read_header(path: Path) -> Dataset | None:
    """A file's DICOM header without pixel data; None for a file that is not DICOM at all (a
    licence or metadata.csv beside a TCIA download), unless it is named .dcm."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError as exc:
        if path.suffix.lower() == ".dcm":
            raise SarcomaSegError(f"{path}: not a DICOM file ({one_line(exc)})") from exc
        return None
    except DICOM_ERRORS as exc:
        raise SarcomaSegError(
            f"{path}: unreadable or truncated DICOM file ({one_line(exc)})"
        ) from exc


def _text(ds: Dataset, keyword: str) -> str:
    """A tag's value as stripped text ('' when absent)."""
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def discover(folder: Path) -> tuple[dict[str, DicomPatient], list[Path]]:
    """Patients of a folder by PatientID, with their series and structure sets; and the files
    that were not DICOM (skipped)."""
    patients: dict[str, DicomPatient] = {}
    series: dict[tuple[str, str], Series] = {}
    skipped = []
    for path in _candidate_files(folder):
        ds = read_header(path)
        if ds is None:
            skipped.append(path)
            continue
        modality = _text(ds, "Modality")
        if modality not in (*IMAGE_MODALITIES, "RTSTRUCT"):
            continue  # other objects (plans, doses, reports) are not read
        pid = _text(ds, "PatientID")
        if not pid:
            raise SarcomaSegError(f"{path}: no PatientID; cannot tell whose {modality} it is")
        check_patient_id(pid, str(path))  # names the store's group and predict's folders
        patient = patients.setdefault(pid, DicomPatient(pid))
        if modality == "RTSTRUCT":
            patient.structures.append((path, ds))
            continue
        uid = _text(ds, "SeriesInstanceUID")
        if not uid:
            raise SarcomaSegError(f"{where_of(path, pid)}: no SeriesInstanceUID")
        key = (pid, uid)
        if key not in series:
            series[key] = Series(uid, modality, pid)
            (patient.ct if modality == "CT" else patient.pet).append(series[key])
        if series[key].modality != modality:
            raise SarcomaSegError(f"{where_of(path, pid)}: series {uid} mixes CT and PET")
        series[key].files.append(path)
        series[key].headers.append(ds)
    return patients, skipped


def _floats(ds: Dataset, keyword: str, count: int, where: str) -> np.ndarray:
    """A numeric multi-valued tag as floats, refusing absent, short or non-numeric values."""
    if keyword not in ds:
        raise SarcomaSegError(f"{where}: no {keyword}; cannot place the slice in space")
    raw = ds.get_item(keyword).value  # undecoded: a value pydicom cannot parse stays bytes
    try:
        value = ds[keyword].value
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        numbers = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SarcomaSegError(f"{where}: {keyword} {raw!r} is not numeric") from exc
    raw = value
    if len(numbers) != count or not np.isfinite(numbers).all():
        raise SarcomaSegError(f"{where}: {keyword} {raw!r} is not {count} finite numbers")
    return numbers


def _rescale(ds: Dataset, where: str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), 1 and 0 when absent, refusing non-numeric values."""
    slope = _floats(ds, "RescaleSlope", 1, where)[0] if "RescaleSlope" in ds else 1.0
    intercept = _floats(ds, "RescaleIntercept", 1, where)[0] if "RescaleIntercept" in ds else 0.0
    return float(slope), float(intercept)


def _check_bounds(series: Series) -> None:
    """Refuse, from headers alone, a series too large to allocate or of mixed slice shapes."""
    first, pid = series.files[0], series.patient_id
    if len(series.files) > MAX_SLICES:
        raise SarcomaSegError(
            f"{where_of(first, pid)}: {series.modality} series of {len(series.files)} slices, "
            f"more than the {MAX_SLICES} a volume may have; refusing it before reading"
        )
    shapes = {}
    for path, ds in zip(series.files, series.headers):
        try:
            shapes[path] = (int(ds.Rows), int(ds.Columns))
        except (AttributeError, TypeError, ValueError) as exc:
            raise SarcomaSegError(
                f"{where_of(path, pid)}: no valid Rows/Columns (a truncated file?)"
            ) from exc
    shape = shapes[first]
    for path, other in shapes.items():
        if other != shape:
            raise SarcomaSegError(
                f"{where_of(path, pid)}: slice size {other} differs from {shape} of "
                f"{first.name} in the same series (mixed slice shapes)"
            )
    voxels = len(series.files) * shape[0] * shape[1]
    if min(shape) < 1 or voxels > MAX_VOXELS:
        raise SarcomaSegError(
            f"{where_of(first, pid)}: headers claim {len(series.files)} slices of {shape}, "
            f"{voxels} voxels (at most {MAX_VOXELS}); refusing it before reading"
        )


def _axis_aligned(directions: np.ndarray) -> bool:
    """Whether every cosine of the orientation is 0 or +-1 (no oblique slices)."""
    return bool(np.all(np.minimum(np.abs(directions), np.abs(np.abs(directions) - 1)) < AXIS_TOL))


def grid_of(series: Series) -> Grid:
    """A series sorted along its normal, refusing oblique or differing orientations, tilted,
    missing, duplicated or unevenly spaced slices and bad pixel spacings (headers only)."""
    _check_bounds(series)
    pid = series.patient_id
    orientations = [
        _floats(ds, "ImageOrientationPatient", 6, where_of(p, pid))
        for p, ds in zip(series.files, series.headers)
    ]
    first = orientations[0]
    for path, orientation in zip(series.files, orientations):
        if not np.allclose(orientation, first, atol=AXIS_TOL):
            raise SarcomaSegError(
                f"{where_of(path, pid)}: slice orientation differs from the series"
            )
        if not _axis_aligned(orientation):
            raise SarcomaSegError(
                f"{where_of(path, pid)}: oblique slices (ImageOrientationPatient "
                f"{np.round(orientation, 4).tolist()}); only axis-aligned series are read"
            )
    row_dir, col_dir = first[:3], first[3:]
    normal = np.cross(row_dir, col_dir)
    spacings = [
        _floats(ds, "PixelSpacing", 2, where_of(p, pid))
        for p, ds in zip(series.files, series.headers)
    ]
    for path, spacing in zip(series.files, spacings):
        if (spacing <= 0).any():
            raise SarcomaSegError(
                f"{where_of(path, pid)}: PixelSpacing {spacing.tolist()} is not > 0"
            )
        if not np.allclose(spacing, spacings[0], atol=1e-4):
            raise SarcomaSegError(f"{where_of(path, pid)}: PixelSpacing differs from the series")
    origins = np.array(
        [
            _floats(ds, "ImagePositionPatient", 3, where_of(p, pid))
            for p, ds in zip(series.files, series.headers)
        ]
    )
    along = origins @ normal
    order = np.argsort(along, kind="stable")
    files = [series.files[i] for i in order]
    headers = [series.headers[i] for i in order]
    origins, along = origins[order], along[order]
    _check_positions(files, origins, along, normal, pid)
    one = where_of(files[0], pid)
    step = float(np.diff(along).mean()) if len(along) > 1 else _thickness(headers[0], one)
    row_mm, col_mm = (float(v) for v in spacings[0])
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_mm  # i runs along a row, i.e. across columns
    lps[:3, 1] = col_dir * row_mm  # j runs down the columns
    lps[:3, 2] = normal * step
    lps[:3, 3] = origins[0]
    shape = (len(files), int(headers[0].Rows), int(headers[0].Columns))
    return Grid(
        series, files, headers, LPS_TO_RAS @ lps, along, step, (row_mm, col_mm),
        row_dir, col_dir, normal, shape,
    )  # fmt: skip


def _thickness(ds: Dataset, where: str) -> float:
    """The slice step of a one-slice series: SliceThickness, 1 mm where it is absent; a value
    that is not a positive number is refused, not replaced."""
    raw = ds.get("SliceThickness")
    if raw is None or raw == "":
        return 1.0
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and 0 < value <= MAX_SPACING_MM):
        raise SarcomaSegError(f"{where}: SliceThickness {raw!s:.40} is not a positive size in mm")
    return value


def _check_positions(
    files: list[Path], origins: np.ndarray, along: np.ndarray, normal: np.ndarray, pid: str
) -> None:
    """Refuse duplicated slice positions, missing or uneven ones, and a gantry tilt."""
    if len(files) < 2:
        return
    gaps = np.diff(along)
    for i, gap in enumerate(gaps):
        if gap < POSITION_TOL_MM:
            raise SarcomaSegError(
                f"{where_of(files[i + 1], pid)}: same slice position {along[i + 1]:.3f} mm as "
                f"{files[i].name} (duplicated slice)"
            )
    step = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap - step) > POSITION_TOL_MM + 0.01 * step:
            raise SarcomaSegError(
                f"{where_of(files[i + 1], pid)}: {gap:.3f} mm from {files[i].name}, the series "
                f"steps {step:.3f} mm (missing or unevenly spaced slices)"
            )
    drift = origins - origins[0]
    in_plane = drift - np.outer(drift @ normal, normal)
    worst = int(np.argmax(np.linalg.norm(in_plane, axis=1)))
    if np.linalg.norm(in_plane[worst]) > POSITION_TOL_MM:
        raise SarcomaSegError(
            f"{where_of(files[worst], pid)}: slice origins move off the slice normal by "
            f"{np.linalg.norm(in_plane[worst]):.3f} mm (gantry tilt); not read"
        )


def read_pixels(grid: Grid) -> np.ndarray:
    """The series' rescaled values, (slices, rows, cols) float32 in sorted order."""
    pid = grid.series.patient_id
    planes = []
    for path in grid.files:
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array  # decode now, so that a truncated file fails here
        except (*DICOM_ERRORS, RuntimeError, NotImplementedError) as exc:  # decoders' own errors
            raise SarcomaSegError(
                f"{where_of(path, pid)}: unreadable or truncated DICOM pixel data ({one_line(exc)})"
            ) from exc
        if pixels.shape != grid.shape[1:]:
            raise SarcomaSegError(
                f"{where_of(path, pid)}: pixel data of shape {pixels.shape}, not {grid.shape[1:]}"
            )
        slope, intercept = _rescale(ds, where_of(path, pid))
        planes.append(pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.stack(planes)


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slices, rows, cols) array with its DICOM-grid affine -> (canonical RAS+ array in NIfTI
    (i, j, k) order, its affine), exactly as the nifti source reorients."""
    image = nib.as_closest_canonical(nib.Nifti1Image(array.transpose(2, 1, 0), affine))
    return np.asarray(image.dataobj), image.affine


def from_canonical(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """An internal (slices, rows, cols) mask on the canonical grid of affine -> the DICOM
    series' own (slices, rows, cols) order."""
    ornt = nib.orientations
    to_input = ornt.ornt_transform(ornt.axcodes2ornt(("R", "A", "S")), ornt.io_orientation(affine))
    return ornt.apply_orientation(mask.transpose(2, 1, 0), to_input).transpose(2, 1, 0)


# --- RTSTRUCT -> mask -----------------------------------------------------------------------


def _referenced(ds: Dataset) -> tuple[set[str], set[str]]:
    """(series UIDs, frame-of-reference UIDs) an RTSTRUCT references."""
    series, frames = set(), set()
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        frames.add(_text(frame, "FrameOfReferenceUID"))
        for study in frame.get("RTReferencedStudySequence", []):
            for item in study.get("RTReferencedSeriesSequence", []):
                series.add(_text(item, "SeriesInstanceUID"))
    for roi in ds.get("StructureSetROISequence", []):
        frames.add(_text(roi, "ReferencedFrameOfReferenceUID"))
    return series - {""}, frames - {""}


def structures_for(
    grid: Grid, structures: list[tuple[Path, Dataset]]
) -> list[tuple[Path, Dataset]]:
    """The RTSTRUCTs drawn on this CT series (by series reference, else by frame of reference),
    refusing one that references the series in another frame of reference."""
    pid, uid = grid.series.patient_id, grid.series.uid
    frame = _text(grid.headers[0], "FrameOfReferenceUID")
    found = []
    for path, ds in structures:
        series, frames = _referenced(ds)
        if uid in series or (not series and frame in frames):
            if frame and frames and frame not in frames:
                raise SarcomaSegError(
                    f"{where_of(path, pid)}: RTSTRUCT references CT series {uid} but frame of "
                    f"reference {', '.join(sorted(frames))}, not the CT's {frame}"
                )
            found.append((path, ds))
    if not found:
        named = "; ".join(
            f"{p.name} references frame(s) {', '.join(sorted(_referenced(d)[1])) or 'none'}"
            for p, d in structures
        )
        raise SarcomaSegError(
            f"{where_of(grid.files[0], pid)}: no RTSTRUCT references this CT series {uid} "
            f"(frame of reference {frame}){'; ' + named if named else ''}"
        )
    return found


def roi_matches(roi: str, name: str, path: Path, pid: str) -> bool:
    """data.roi against one ROI name from an untrusted file, in bounded time: a pattern with
    catastrophic backtracking ((a+)+$ against 40 a's and a '!') is refused, not run for minutes."""
    try:
        return regex.search(roi, name, timeout=ROI_MATCH_SECONDS) is not None
    except TimeoutError:
        raise SarcomaSegError(
            f"{where_of(path, pid)}: data.roi={roi[:80]!r} took more than {ROI_MATCH_SECONDS} s "
            f"on the ROI name {name[:64]!r}; use a simpler pattern"
        ) from None


def choose_roi(
    structures: list[tuple[Path, Dataset]], roi: str, pid: str
) -> tuple[Path, Dataset, str]:
    """(file, ROI contour item, ROI name) of the one ROI whose name matches the regex roi."""
    names, matches = [], []
    for path, ds in structures:
        for item in ds.get("StructureSetROISequence", []):
            name = _text(item, "ROIName")
            names.append(name)
            if roi_matches(roi, name, path, pid):
                matches.append((path, ds, item.get("ROINumber"), name))
    if len(matches) != 1:
        count = "no ROI matches" if not matches else f"{len(matches)} ROIs match"
        raise SarcomaSegError(
            f"{where_of(structures[0][0], pid)}: {count} data.roi={roi!r}; ROIs found: "
            f"{', '.join(names) or 'none'}"
        )
    path, ds, number, name = matches[0]
    for item in ds.get("ROIContourSequence", []):
        if str(item.get("ReferencedROINumber")) == str(number):
            return path, item, name
    raise SarcomaSegError(f"{where_of(path, pid)}: ROI {name!r} has no contours")


def _contour_points(contour: Dataset, where: str) -> np.ndarray | None:
    """A closed planar contour's points as (n, 3) mm, None for points and open lines."""
    if _text(contour, "ContourGeometricType") not in ("CLOSED_PLANAR", ""):
        return None  # POINT / OPEN_PLANAR outline nothing
    # parsed from the undecoded bytes when possible: pydicom would turn each of the ~1e5 values
    # of a real RTSTRUCT into a cached DS object (~40 MB per patient, held with the header)
    item = contour.get_item("ContourData") if "ContourData" in contour else None
    raw = item.value if item is not None else []
    try:
        if isinstance(raw, bytes):
            values = raw.rstrip(b"\0 ").split(b"\\") if raw.strip(b"\0 ") else []
        else:
            values = raw if isinstance(raw, list | MultiValue) else [raw]
        data = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError) as exc:
        raise SarcomaSegError(f"{where}: ContourData is not numeric") from exc
    if data.size % 3 or not np.isfinite(data).all():
        raise SarcomaSegError(f"{where}: ContourData of {data.size} values is not (x, y, z) points")
    points = data.reshape(-1, 3)
    return points if len(points) >= 3 else None


def _even_odd(polygons: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Pixels whose centre lies inside an odd number of the polygons ((n, 2) column, row
    coordinates): a scanline fill at pixel centres, holes and overlaps by even-odd."""
    starts = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    x0, y0, x1, y1 = starts[:, 0], starts[:, 1], ends[:, 0], ends[:, 1]
    mask = np.zeros((rows, cols), bool)
    centres = np.arange(cols, dtype=float)
    low = max(0, int(np.ceil(min(y0.min(), y1.min()))))
    high = min(rows - 1, int(np.floor(max(y0.max(), y1.max()))))
    for row in range(low, high + 1):
        # half-open rule: an edge counts at rows in [lower end, upper end), so a vertex on the
        # scanline is counted once
        crossing = ((y0 <= row) & (y1 > row)) | ((y1 <= row) & (y0 > row))
        if not crossing.any():
            continue
        a, b, c, d = x0[crossing], y0[crossing], x1[crossing], y1[crossing]
        xs = np.sort(a + (row - b) * (c - a) / (d - b))
        left = np.searchsorted(xs, centres, side="left")  # crossings left of each centre
        mask[row] = left % 2 == 1
    return mask


def rasterise(grid: Grid, contours: Dataset, where: str) -> np.ndarray:
    """The ROI's closed contours as a (slices, rows, cols) uint8 mask on the series' grid."""
    per_slice: dict[int, list[np.ndarray]] = {}
    count = len(contours.get("ContourSequence", []))
    if count > MAX_CONTOURS:  # counted before any is read: 200,000 would take a minute
        raise SarcomaSegError(
            f"{where}: the ROI holds {count} contours, more than the {MAX_CONTOURS} a tumour "
            "outline needs; refusing it"
        )
    tolerance = CONTOUR_SLICE_TOL * grid.step
    origins = [
        np.array([float(v) for v in ds.ImagePositionPatient], dtype=float) for ds in grid.headers
    ]
    for contour in contours.get("ContourSequence", []):
        points = _contour_points(contour, where)
        if points is None:
            continue
        along = points @ grid.normal
        level = float(along.mean())
        if np.ptp(along) > tolerance:
            raise SarcomaSegError(
                f"{where}: a contour is not on one slice (spans {np.ptp(along):.2f} mm)"
            )
        k = int(np.argmin(np.abs(grid.positions - level)))
        if abs(grid.positions[k] - level) > tolerance:
            raise SarcomaSegError(
                f"{where}: a contour at {level:.2f} mm along the slice normal lies on no CT slice "
                f"(nearest {grid.positions[k]:.2f} mm)"
            )
        rel = points - origins[k]
        xy = np.stack(
            [rel @ grid.row_dir / grid.pixel_mm[1], rel @ grid.col_dir / grid.pixel_mm[0]], 1
        )
        per_slice.setdefault(k, []).append(xy)
    mask = np.zeros(grid.shape, np.uint8)
    for k, polygons in per_slice.items():
        mask[k] = _even_odd(polygons, grid.shape[1], grid.shape[2])
    return mask


# --- PET -----------------------------------------------------------------------------------


def _seconds(value: str, where: str, keyword: str) -> float:
    """A DICOM TM value (HHMMSS.frac) as seconds since midnight."""
    text = str(value).strip().replace(":", "")
    try:
        hours, minutes = int(text[0:2]), int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError as exc:
        raise SarcomaSegError(f"{where}: {keyword} {value!r} is not a DICOM time") from exc
    return hours * 3600 + minutes * 60 + seconds


def suv_factor(ds: Dataset, where: str) -> float:
    """Multiplier from stored PET values to body-weight SUV: 1 for Units GML (stored as SUV),
    weight / decayed dose for BQML; other units are refused."""
    units = _text(ds, "Units").upper()
    if units == "GML":
        return 1.0
    if units != "BQML":
        raise SarcomaSegError(
            f"{where}: PET Units {units or 'missing'}; only GML (SUV) and BQML read"
        )
    info = ds.get("RadiopharmaceuticalInformationSequence")
    if not info or "PatientWeight" not in ds:
        raise SarcomaSegError(
            f"{where}: BQML PET without PatientWeight or RadiopharmaceuticalInformationSequence; "
            "cannot compute SUV"
        )
    drug = info[0]
    try:
        dose = float(drug.RadionuclideTotalDose)
        half_life = float(drug.RadionuclideHalfLife)
        weight_g = float(ds.PatientWeight) * 1000.0
        start = _seconds(drug.RadiopharmaceuticalStartTime, where, "RadiopharmaceuticalStartTime")
    except (AttributeError, TypeError, ValueError) as exc:
        raise SarcomaSegError(
            f"{where}: BQML PET lacks dose, half life or start time for SUV"
        ) from exc
    scan_time = _text(ds, "SeriesTime") or _text(ds, "AcquisitionTime")
    if not scan_time:
        raise SarcomaSegError(f"{where}: BQML PET without SeriesTime or AcquisitionTime")
    elapsed = _seconds(scan_time, where, "SeriesTime") - start
    elapsed += 86400 if elapsed < 0 else 0  # injected before midnight, scanned after
    if not all(np.isfinite(v) and v > 0 for v in (dose, half_life, weight_g)):
        raise SarcomaSegError(f"{where}: BQML PET with non-positive dose, half life or weight")
    if not MIN_HALF_LIFE_S <= half_life <= MAX_HALF_LIFE_S:
        raise SarcomaSegError(
            f"{where}: BQML PET RadionuclideHalfLife {half_life:g} s is not a tracer's "
            f"({MIN_HALF_LIFE_S:g} to {MAX_HALF_LIFE_S:g} s)"
        )
    factor = weight_g / (dose * 2.0 ** (-elapsed / half_life))
    if not SUV_FACTOR_RANGE[0] <= factor <= SUV_FACTOR_RANGE[1]:
        raise SarcomaSegError(
            f"{where}: BQML PET gives an SUV factor of {factor:.3g} (dose {dose:.3g} Bq, weight "
            f"{weight_g / 1000:g} kg); outside {SUV_FACTOR_RANGE}, the tags are not plausible"
        )
    return factor


def read_pet(grid: Grid, where: str) -> np.ndarray:
    """A PET series in body-weight SUV, (slices, rows, cols) in sorted order."""
    return read_pixels(grid) * np.float32(suv_factor(grid.headers[0], where))


# --- the dicom source ----------------------------------------------------------------------


def _only(series: list[Series], what: str, pid: str, folder: Path) -> Series | None:
    """The one series of a kind, None if absent; two or more are refused, naming them."""
    if len(series) > 1:
        where = ", ".join(f"{s.uid} ({s.files[0]})" for s in series)
        raise SarcomaSegError(f"{folder} (patient {pid}): {len(series)} {what} series: {where}")
    return series[0] if series else None


def read_patient(folder: Path, patient: DicomPatient, roi: str) -> tuple[Volume, list[Path]]:
    """One patient's CT, RTSTRUCT mask and PET as a validated Volume, and the files read."""
    pid = patient.patient_id
    ct_series = _only(patient.ct, "CT", pid, folder)
    if ct_series is None:
        first = patient.structures[0][0] if patient.structures else patient.pet[0].files[0]
        raise SarcomaSegError(f"{where_of(first, pid)}: no CT series for this patient")
    ct_grid = grid_of(ct_series)
    structures = structures_for(ct_grid, patient.structures)
    rs_path, contours, _ = choose_roi(structures, roi, pid)
    mask = rasterise(ct_grid, contours, where_of(rs_path, pid))
    pet_series = _only(patient.pet, "PET", pid, folder)
    pet_grid = grid_of(pet_series) if pet_series else None
    if pet_grid is not None:
        frame = _text(ct_grid.headers[0], "FrameOfReferenceUID")
        if _text(pet_grid.headers[0], "FrameOfReferenceUID") != frame:
            raise SarcomaSegError(
                f"{where_of(pet_grid.files[0], pid)}: PET frame of reference differs from the CT's "
                f"{frame}; cannot place it on the CT"
            )
        suv_factor(pet_grid.headers[0], where_of(pet_grid.files[0], pid))  # refuse before pixels
    ct, ct_affine = to_canonical(read_pixels(ct_grid), ct_grid.affine)
    raw, _ = to_canonical(mask, ct_grid.affine)
    pet, covered = None, 1.0
    if pet_grid is not None:
        where = where_of(pet_grid.files[0], pid)
        pet_c, pet_affine = to_canonical(read_pet(pet_grid, where), pet_grid.affine)
        pet, covered = pet_onto_grid(pet_c, pet_affine, where, ct.shape, ct_affine)
    provenance = f"{folder.resolve().name}/{ct_grid.files[0].parent.relative_to(folder).as_posix()}"
    volume = canonical_volume(pid, ct, raw, pet, covered, ct_affine, provenance)
    files = ct_grid.files + [rs_path] + (pet_grid.files if pet_grid else [])
    return volume, files


def read_dicom(folder: Path, roi: str) -> tuple[list[Volume], list[Path]]:
    """Every patient of a DICOM folder (any layout) by PatientID, and the files read."""
    folder = Path(folder)
    patients, _ = discover(folder)
    if not any(p.ct for p in patients.values()):
        raise SarcomaSegError(f"{folder}: no DICOM CT series found")
    volumes, files = [], []
    for pid in sorted(patients):
        volume, used = read_patient(folder, patients[pid], roi)
        volumes.append(volume)
        files.extend(used)
    return volumes, sorted(files)


# --- predict --cohort: every patient of a tree, each as predict reads one ------------------


def series_folder(series: Series) -> Path:
    """The one folder that holds a series' files (predict reads a series as a folder)."""
    folders = sorted({path.parent for path in series.files})
    if len(folders) != 1:
        raise SarcomaSegError(
            f"{where_of(series.files[0], series.patient_id)}: series {series.uid} spreads over "
            f"{len(folders)} folders; predict reads a series from one folder"
        )
    return folders[0]


def cohort_inputs(folder: Path, patient: DicomPatient) -> tuple[Path, Path | None]:
    """(CT series folder, PET series folder or None) of one patient of a tree."""
    pid = patient.patient_id
    ct = _only(patient.ct, "CT", pid, folder)
    if ct is None:
        first = patient.structures[0][0] if patient.structures else patient.pet[0].files[0]
        raise SarcomaSegError(f"{where_of(first, pid)}: no CT series for this patient")
    pet = _only(patient.pet, "PET", pid, folder)
    return series_folder(ct), series_folder(pet) if pet else None


def cohort_truth(folder: Path, patient: DicomPatient, roi: str) -> np.ndarray | None:
    """A patient's RTSTRUCT ROI (data.roi's rule) as a mask on the internal canonical grid, or
    None where the patient has no RTSTRUCT."""
    if not patient.structures:
        return None
    ct = _only(patient.ct, "CT", patient.patient_id, folder)
    grid = grid_of(ct)
    rs_path, contours, _ = choose_roi(structures_for(grid, patient.structures), roi, ct.patient_id)
    mask = rasterise(grid, contours, where_of(rs_path, ct.patient_id))
    raw, _ = to_canonical(mask, grid.affine)
    return internal_axes(raw > 0).astype(np.uint8)


# --- predict: one CT series in, an RTSTRUCT out ---------------------------------------------


def _one_series(folder: Path, modality: str) -> Grid:
    """The one image series of a folder, of this modality (CT or PT), refusing other images."""
    folder = Path(folder)
    files = _candidate_files(folder)
    if not files:
        raise SarcomaSegError(f"{folder}: no DICOM files in the folder")
    series: dict[str, Series] = {}
    for path in files:
        ds = read_header(path)
        if ds is None:
            raise SarcomaSegError(f"{path}: not a DICOM file")
        found = _text(ds, "Modality") or modality
        if found in NON_IMAGE_MODALITIES:
            continue
        if found != modality:
            raise SarcomaSegError(f"{path}: modality {found}, not {modality}")
        uid = _text(ds, "SeriesInstanceUID")
        item = series.setdefault(uid, Series(uid, modality, _text(ds, "PatientID") or folder.name))
        item.files.append(path)
        item.headers.append(ds)
    if len(series) != 1:
        raise SarcomaSegError(
            f"{folder}: {len(series)} DICOM {modality} series in one folder; give one"
        )
    return grid_of(next(iter(series.values())))


def check_same_frame(ct_folder: Path, pet_folder: Path) -> None:
    """predict with a DICOM CT and a DICOM PET: both series in one frame of reference (as the
    dicom source requires), from their headers, before any pixels are read."""
    ct, pet = _one_series(ct_folder, "CT"), _one_series(pet_folder, "PT")
    frame = _text(ct.headers[0], "FrameOfReferenceUID")
    if _text(pet.headers[0], "FrameOfReferenceUID") != frame:
        raise SarcomaSegError(
            f"{pet.files[0]}: PET frame of reference differs from the CT's {frame or 'none'} "
            f"({ct_folder}); cannot place it on the CT"
        )


def read_ct_series(folder: Path) -> tuple[Grid, np.ndarray]:
    """predict's input: the one CT series of a folder (its grid and HU)."""
    grid = _one_series(folder, "CT")
    return grid, read_pixels(grid)


def read_pet_series_onto(
    folder: Path, name: str, ct_shape: tuple, ct_affine: np.ndarray
) -> tuple[np.ndarray, float]:
    """predict's --pet as a DICOM folder: the one PET series in SUV (as the dicom source reads
    it) resampled onto the canonical CT grid, and the share of CT voxels it covers."""
    grid = _one_series(folder, "PT")
    where = f"{grid.files[0]} (scan {name})"
    pet, pet_affine = to_canonical(read_pet(grid, where), grid.affine)
    return pet_onto_grid(pet, pet_affine, where, ct_shape, ct_affine)


def _contours_of(plane: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (n, 2) of (col, row) pixel coordinates: iso-lines at 0.5 between the
    mask's pixel centres, so that tumour centres lie inside and background ones outside (holes
    are outlines of their own: the reader's even-odd rule takes them out again)."""
    from skimage.measure import find_contours  # only predict writes contours

    padded = np.pad(plane.astype(np.float32), 1)  # every outline closes inside the padding
    return [c[:, ::-1] - 1.0 for c in find_contours(padded, 0.5) if len(c) >= 4]


def build_rtstruct(grid: Grid, mask: np.ndarray, roi_name: str = "GTV_predicted") -> Dataset:
    """An RT Structure Set of one ROI traced from mask ((slices, rows, cols) on the series'
    grid), referencing the series, its study, frame of reference and each slice's instance."""
    first = grid.headers[0]
    frame = _text(first, "FrameOfReferenceUID") or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "StudyID", "StudyDate"):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 999  # why: any number; viewers sort structure sets after the images
    ds.StructureSetLabel = "sarcoma-seg"
    today = datetime.datetime.now(datetime.UTC)
    ds.StructureSetDate, ds.StructureSetTime = today.strftime("%Y%m%d"), today.strftime("%H%M%S")
    images = [Dataset() for _ in grid.headers]
    for item, header in zip(images, grid.headers):
        item.ReferencedSOPClassUID = header.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")
        item.ReferencedSOPInstanceUID = header.get("SOPInstanceUID", "")
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = grid.series.uid
    series_ref.ContourImageSequence = Sequence(images)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study_ref.ReferencedSOPInstanceUID = first.get("StudyInstanceUID", "")
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame
    frame_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_ref])
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, frame
    roi.ROIName, roi.ROIGenerationAlgorithm = roi_name, "AUTOMATIC"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for k, header in enumerate(grid.headers):
        origin = np.array([float(v) for v in header.ImagePositionPatient], dtype=float)
        for outline in _contours_of(mask[k]):
            mm = (
                origin
                + np.outer(outline[:, 0] * grid.pixel_mm[1], grid.row_dir)
                + np.outer(outline[:, 1] * grid.pixel_mm[0], grid.col_dir)
            )
            contour = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID = images[k].ReferencedSOPClassUID
            image.ReferencedSOPInstanceUID = images[k].ReferencedSOPInstanceUID
            contour.ContourImageSequence = Sequence([image])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(mm)
            contour.ContourData = [f"{v:.3f}" for v in mm.ravel()]
            contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = 1
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
    ds.RTROIObservationsSequence = Sequence([observation])
    return ds


def write_rtstruct(grid: Grid, mask: np.ndarray, path: Path) -> Path:
    """build_rtstruct saved as a DICOM file."""
    build_rtstruct(grid, mask).save_as(path, enforce_file_format=True)
    return path


def read_dicom_series(folder: Path, pet: PetReader | None = None) -> Scan:
    """A folder of CT slices: sorted along the slice normal, rescaled to HU, placed by the
    DICOM geometry (converted from DICOM's LPS to NIfTI's RAS); the mask goes back as NIfTI
    and, beside it, as an RTSTRUCT on the input series (RTSTRUCT_NAME)."""
    grid, hu = read_ct_series(folder)
    image = nib.Nifti1Image(hu.transpose(2, 1, 0), grid.affine)  # (slices, rows, cols) -> ijk
    scan = canonical_scan(folder.name, image, pet)
    save_nifti = scan.save_mask

    def save(mask: np.ndarray, path: Path) -> Path:
        """The NIfTI mask, and the RTSTRUCT outlining it on the input's slices."""
        save_nifti(mask, path)
        own = from_canonical(mask, grid.affine)  # back to the series' own order
        write_rtstruct(grid, own, path.parent / RTSTRUCT_NAME)
        return path

    scan.save_mask = save
    return scan
