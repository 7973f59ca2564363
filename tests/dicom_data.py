"""Tiny synthetic DICOM for tests: an axial CT series, an RTSTRUCT drawn on it and a PET series,
written with pydicom; every tag a test may break is a keyword argument."""

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    RTStructureSetStorage,
    generate_uid,
)

SLICES, SIDE = 6, 16
SPACING = (3.0, 1.5, 1.25)  # slice, row, column mm
ORIGIN = (-10.0, -12.0, 50.0)  # LPS mm of the first slice's first pixel


def _meta(sop_class: str) -> tuple[FileMetaDataset, str]:
    """File meta of a new instance and its SOPInstanceUID."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta, meta.MediaStorageSOPInstanceUID


def reference_hu() -> np.ndarray:
    """(slices, rows, cols) HU: a bright block on soft tissue."""
    hu = np.full((SLICES, SIDE, SIDE), 40, np.int16)
    hu[:, 4:12, 3:11] = 300
    hu[0, 0, :] = -1000
    return hu


def square(k: int, rows: tuple[float, float], cols: tuple[float, float]) -> list[float]:
    """A closed square contour through pixel coordinates (row, col) on slice k, in LPS mm."""
    (r0, r1), (c0, c1) = rows, cols
    pixels = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
    z = ORIGIN[2] + k * SPACING[0]
    points = [(ORIGIN[0] + c * SPACING[2], ORIGIN[1] + r * SPACING[1], z) for r, c in pixels]
    return [round(v, 4) for p in points for v in p]


def default_contours() -> list[list[float]]:
    """Squares on slices 1-4; slice 2 has a hole (a second square inside the first)."""
    contours = [square(k, (3.5, 10.5), (2.5, 9.5)) for k in range(1, 5)]
    contours.append(square(2, (5.5, 7.5), (4.5, 6.5)))
    return contours


def reference_mask() -> np.ndarray:
    """The mask default_contours() encloses, by pixel centres."""
    mask = np.zeros((SLICES, SIDE, SIDE), np.uint8)
    mask[1:5, 4:11, 3:10] = 1
    mask[2, 6:8, 5:7] = 0
    return mask


def write_ct(folder: Path, pid: str, **tags: Any) -> dict[str, Any]:
    """A CT series of SLICES files; tags override per-series values, callables per slice
    (k, ds) -> None. Returns the UIDs and the files."""
    folder.mkdir(parents=True, exist_ok=True)
    uids = {
        "study": tags.pop("study", generate_uid()),
        "series": tags.pop("series", generate_uid()),
        "frame": tags.pop("frame", generate_uid()),
    }
    hu = tags.pop("hu", reference_hu())
    per_slice = tags.pop("per_slice", None)
    files, instances = [], []
    for k, plane in enumerate(hu):
        meta, uid = _meta(CTImageStorage)
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.Modality, ds.PatientID, ds.PatientName = "CT", pid, pid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.FrameOfReferenceUID = uids["frame"]
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.uint16).tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        if per_slice:
            per_slice(k, ds)
        path = folder / f"CT{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        instances.append(uid)
    return uids | {"files": files, "instances": instances}


def write_rtstruct(
    path: Path,
    pid: str,
    ct: dict[str, Any],
    contours: list[list[float]] | None = None,
    names: tuple[str, ...] = ("GTV_Mass_CT",),
    frame: str | None = None,
) -> Path:
    """An RTSTRUCT referencing the CT series of ct; contours go to the first ROI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta, uid = _meta(RTStructureSetStorage)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, uid
    ds.Modality, ds.PatientID = "RTSTRUCT", pid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct["study"], generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = ct["series"]
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([series])
    ref = Dataset()
    ref.FrameOfReferenceUID = frame or ct["frame"]
    ref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    rois, roi_contours = [], []
    for number, name in enumerate(names, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame or ct["frame"]
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        items = []
        for points in (
            (contours if contours is not None else default_contours()) if number == 1 else []
        ):
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points) // 3
            contour.ContourData = points
            items.append(contour)
        item.ContourSequence = Sequence(items)
        roi_contours.append(item)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_pet(folder: Path, pid: str, ct: dict[str, Any], units: str = "GML", **tags: Any) -> list:
    """A PET series on a coarser grid (half the rows and cols, twice the pixel size) covering
    the CT; stored value 1000 everywhere with slope 0.002 (2.0 in Units)."""
    folder.mkdir(parents=True, exist_ok=True)
    series, files = generate_uid(), []
    for k in range(SLICES):
        meta, uid = _meta(PositronEmissionTomographyImageStorage)
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = PositronEmissionTomographyImageStorage, uid
        ds.Modality, ds.PatientID = "PT", pid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ct["study"], series
        ds.FrameOfReferenceUID = ct["frame"]
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1] * 2, SPACING[2] * 2]
        ds.Rows, ds.Columns = SIDE // 2, SIDE // 2
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 0.002, 0
        ds.Units = units
        ds.PixelData = np.full((SIDE // 2, SIDE // 2), 1000, np.uint16).tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        path = folder / f"PT{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def write_patient(root: Path, pid: str, pet: bool = False, **ct_tags: Any) -> dict[str, Any]:
    """<root>/<pid>/CT/image/*.dcm + CT/mask/RS.dcm (+ PET/image), the shared layout."""
    ct = write_ct(root / pid / "CT" / "image", pid, **ct_tags)
    write_rtstruct(root / pid / "CT" / "mask" / "RS.dcm", pid, ct)
    if pet:
        write_pet(root / pid / "PET" / "image", pid, ct)
    return ct


def flat_copy(root: Path, flat: Path) -> Path:
    """Every file under root copied into one flat folder, with meaningless names."""
    flat.mkdir(parents=True)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    order = np.random.default_rng(0).permutation(len(files))
    for i, path in zip(order, files):
        shutil.copyfile(path, flat / f"f{i:05d}")
    return flat


def set_tag(path: Path, keyword: str, value: Any) -> None:
    """Rewrite one tag of a DICOM file."""
    ds = pydicom.dcmread(path)
    setattr(ds, keyword, value)
    ds.save_as(path)
