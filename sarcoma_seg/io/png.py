"""PNG: the slices source (exported 8-bit CT slices with masks of the same name) and predict's
single-slice reader and mask writer.

PNG slices keep each image's own row and column order; nothing in the files says which way the
patient lies. In the real sts-slices the table (posterior) is at the bottom, so rows run anterior
to posterior, the reverse of the NIfTI rows, and the slice index runs from the feet up.
"""

import re
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sarcoma_seg.errors import SarcomaSegError, one_line
from sarcoma_seg.io.common import (
    Scan,
    check_inside,
    require_folder,
    visible_entries,
    where_of,
)
from sarcoma_seg.volumes import (
    KAGGLE_SPACING_MM,
    MAX_PNG_PIXELS,
    MAX_SLICES,
    MAX_VOXELS,
    Volume,
    check_labels,
    validated_volume,
)

IMAGE_DIR, MASK_DIR = "ct_images", "mask_images"  # ct_images<suffix> pairs with mask_images<suffix>
PNG_NAME = re.compile(r"(?P<patient>.+)_(?P<index>\d+)_\.png")  # <PATIENT>_<SLICE>_.png
# PIL raises SyntaxError on bad chunks, DecompressionBombError on sizes our header check missed
PNG_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_MODES = ("L",)  # 8-bit grayscale only: anything else is not the png8 the units promise
MASK_MODES = ("L", "1", "I;16", "I")


@dataclass(frozen=True)
class SliceFile:
    """One PNG image / mask pair of one patient."""

    patient_id: str
    index: int
    image: Path
    mask: Path


def _slice_folder_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(ct_images<suffix>, mask_images<suffix>) folder pairs, refusing unpaired ones."""
    subdirs = [p for p in visible_entries(folder) if p.is_dir()]
    images = {p.name[len(IMAGE_DIR) :]: p for p in subdirs if p.name.startswith(IMAGE_DIR)}
    masks = {p.name[len(MASK_DIR) :]: p for p in subdirs if p.name.startswith(MASK_DIR)}
    for suffix in sorted(set(images) ^ set(masks)):
        present, want = (images, MASK_DIR) if suffix in images else (masks, IMAGE_DIR)
        raise SarcomaSegError(f"{present[suffix]}: no {want}{suffix} folder beside it")
    return [(images[s], masks[s]) for s in sorted(images)]


def _pair_slice_files(image_dir: Path, mask_dir: Path) -> list[SliceFile]:
    """The image / mask pairs of one folder pair, refusing unpaired or misnamed PNGs."""
    image_names = {p.name for p in visible_entries(image_dir) if p.suffix.lower() == ".png"}
    mask_names = {p.name for p in visible_entries(mask_dir) if p.suffix.lower() == ".png"}
    pairs = []
    for name in sorted(image_names | mask_names):
        path = (image_dir if name in image_names else mask_dir) / name
        match = PNG_NAME.fullmatch(name)
        if match is None:
            raise SarcomaSegError(f"{path}: name is not <PATIENT>_<SLICE>_.png")
        pid = match["patient"]
        if name not in mask_names:
            raise SarcomaSegError(f"{where_of(path, pid)}: no mask {mask_dir / name}")
        if name not in image_names:
            raise SarcomaSegError(f"{where_of(path, pid)}: no image {image_dir / name}")
        pairs.append(SliceFile(pid, int(match["index"]), image_dir / name, mask_dir / name))
    return pairs


def slice_files(folder: Path) -> list[SliceFile]:
    """Every slice of a PNG folder (its image / mask pair), pooled over all folder pairs, by
    patient and slice index."""
    folder = require_folder(folder)
    folder_pairs = _slice_folder_pairs(folder)
    if not folder_pairs:
        raise SarcomaSegError(
            f"{folder}: no recognised PNG layout (expected {IMAGE_DIR}<suffix>/ + "
            f"{MASK_DIR}<suffix>/ holding <PATIENT>_<SLICE>_.png)"
        )
    found: dict[tuple[str, int], SliceFile] = {}
    for image_dir, mask_dir in folder_pairs:
        for item in _pair_slice_files(image_dir, mask_dir):
            check_inside(item.image, folder)  # links may not lead out of data.path
            check_inside(item.mask, folder)
            key = (item.patient_id, item.index)
            # a slice in two folders is refused even when identical: the original folders are
            # disjoint, so a repeat means a bad merge, and refusing needs no pixel comparison
            if key in found:
                raise SarcomaSegError(
                    f"{where_of(item.image, item.patient_id)}: slice {item.index} also in "
                    f"{found[key].image}"
                )
            found[key] = item
    if not found:
        raise SarcomaSegError(
            f"{folder}: no PNG slices in {', '.join(p.name for p, _ in folder_pairs)}"
        )
    return sorted(found.values(), key=lambda s: (s.patient_id, s.index))


def slice_inputs(folder: Path) -> list[Path]:
    """The PNG files read_slices reads, images and masks, sorted."""
    return sorted(p for s in slice_files(folder) for p in (s.image, s.mask))


def check_png_size(path: Path, patient_id: str) -> None:
    """Refuse a PNG whose header (IHDR) declares more than MAX_PNG_PIXELS, before decoding."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)  # signature, IHDR length and type, width, height
    except OSError as exc:
        where = where_of(path, patient_id)
        raise SarcomaSegError(f"{where}: unreadable PNG ({exc.strerror})") from exc
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return  # not a PNG header: PIL (PNG only) refuses it below with its own reason
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if width * height > MAX_PNG_PIXELS:
        raise SarcomaSegError(
            f"{where_of(path, patient_id)}: PNG header declares {width} x {height} pixels, more "
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
            f"{where_of(path, patient_id)}: unreadable or truncated PNG ({one_line(exc)})"
        ) from exc
    if mode not in modes:
        raise SarcomaSegError(
            f"{where_of(path, patient_id)}: PNG mode {mode}, expected grayscale {'/'.join(modes)}"
        )
    return array


def _stack_patient(folder: Path, patient_id: str, items: list[SliceFile]) -> Volume:
    """One patient's slices, stacked in slice-index order, as a validated Volume."""
    if len(items) > MAX_SLICES:
        raise SarcomaSegError(
            f"{where_of(items[0].image.parent, patient_id)}: {len(items)} slices, more than the "
            f"{MAX_SLICES} a volume may have"
        )
    images, labels = [], []
    for item in items:
        image = read_png(item.image, patient_id, IMAGE_MODES)
        if len(items) * image.size > MAX_VOXELS:
            raise SarcomaSegError(
                f"{where_of(item.image, patient_id)}: {len(items)} slices of {image.shape} make "
                f"more than the {MAX_VOXELS} voxels a volume may have"
            )
        label = read_png(item.mask, patient_id, MASK_MODES)
        if label.shape != image.shape:
            raise SarcomaSegError(
                f"{where_of(item.mask, patient_id)}: mask size {label.shape} differs from image "
                f"size {image.shape} (rows, cols)"
            )
        if images and image.shape != images[0].shape:
            raise SarcomaSegError(
                f"{where_of(item.image, patient_id)}: size {image.shape} differs from "
                f"{items[0].image.name} size {images[0].shape} (rows, cols) of the same patient"
            )
        check_labels(label, where_of(item.mask, patient_id))
        images.append(image)
        labels.append(label)
    raw = np.stack(labels)
    folders = sorted({item.image.parent.name for item in items})
    # Rows of the stack are the slices that exist, in index order: a gap in the indices is
    # closed up, so neighbours across it are not 5 mm apart; slice_files() gives the true ones.
    return validated_volume(
        patient_id,
        np.stack(images).astype(np.float32),  # 0..255 intensities, not HU
        raw,  # 0, 1 and 2 occur: any label > 0 is tumour
        None,
        # the source file's 5 mm voxels; approximate in-plane: the PNGs were resized to 256x256
        # from an unknown in-plane size
        KAGGLE_SPACING_MM,
        f"{folder.resolve().name}/{{{','.join(folders)}}}/{patient_id}_*_.png",
        units="png8",
    )


def read_slices(folder: Path) -> list[Volume]:
    """Every patient of a PNG slice folder, all folder pairs pooled, by patient id."""
    folder = Path(folder)
    by_patient: dict[str, list[SliceFile]] = defaultdict(list)
    for item in slice_files(folder):
        by_patient[item.patient_id].append(item)
    return [_stack_patient(folder, pid, items) for pid, items in sorted(by_patient.items())]


def read_png_slice(path: Path) -> Scan:
    """One 8-bit grayscale CT slice exported as PNG; the mask is a PNG of the same size."""
    array = read_png(path, path.stem, IMAGE_MODES)  # 8-bit grayscale, as the exported set

    def save(mask: np.ndarray, out: Path) -> Path:
        """0 background / 1 tumour, as the exported data set's masks."""
        Image.fromarray(mask[0].astype(np.uint8)).save(out)
        return out

    ct = array[None].astype(np.float32)
    return Scan(path.stem, ct, None, KAGGLE_SPACING_MM, "png8", save, ".png")
