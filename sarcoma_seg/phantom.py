"""Seeded synthetic CT/PET phantom patients written in the Kaggle soft-tissue-sarcoma file schema.

Each patient is a thigh/pelvis-like cross-section at 5 mm voxels: air, table, skin, subcutaneous
fat, muscle with fat septa and vessels, one or two bones with cortex and marrow, and one or two
irregular tumours with a modest contrast to muscle. Axis 0 indexes axial slices, as in
`lab_petct_vox_5.00mm.h5`.
"""

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from sarcoma_seg.errors import SarcomaSegError
from sarcoma_seg.lesions import largest_component
from sarcoma_seg.volumes import HU_SCALE, KAGGLE_GROUPS, KAGGLE_H5

# a tumour blob keeps its largest face-connected (6-connectivity) piece: the phantoms were generated
# so from the start, and every synthetic patient (and the data digest in dvc.lock) depends on it
BLOB_CONNECTIVITY = 1

STUDY_LIST_NAME = "study_list.csv"
STUDY_COLUMNS = (
    "Patient ID",
    "Sex",
    "Age",
    "Site of primary STS",
    "Histological type",
    "Grade",
    "Treatment",
)

AIR_HU = -1000.0
MIN_SHAPE = (8, 32, 32)  # fewer slices or pixels cannot hold a multi-slice tumour beside bone


@dataclass(frozen=True)
class Grid:
    """Voxel coordinates of one volume, broadcastable as (slices, rows, cols)."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Body:
    """The body outline: normalised radius (< 1 inside), polar angle and ellipse geometry."""

    rho: np.ndarray
    theta: np.ndarray
    cy: float
    cx: float
    half_h: float
    half_w: float
    scale: np.ndarray  # per-slice size factor, shape (slices, 1, 1)
    drift: np.ndarray  # per-slice sideways shift in pixels, shape (slices, 1, 1)


@dataclass(frozen=True)
class Bone:
    """One long bone: centre and radius per slice, cortex thickness, all in pixels."""

    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray
    cortex: float


@dataclass(frozen=True)
class Anatomy:
    """Boolean tissue masks of one patient, plus each tumour voxel's normalised depth."""

    body: np.ndarray
    skin: np.ndarray
    muscle: np.ndarray  # everything inside the subcutaneous fat layer
    bone: np.ndarray
    marrow: np.ndarray
    septa: np.ndarray
    vessel: np.ndarray
    tumour: np.ndarray
    depth: np.ndarray


def make_grid(shape: tuple[int, int, int]) -> Grid:
    """Open index grids for a volume of shape (slices, rows, cols)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return Grid(z=z.astype(np.float32), y=y.astype(np.float32), x=x.astype(np.float32), shape=shape)


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | tuple[float, ...]
) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def slice_profile(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth per-slice factor around 1: a slow sine plus a linear taper along the limb."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    taper = rng.uniform(-amplitude, amplitude)
    return 1.0 + amplitude * np.sin(2 * np.pi * 0.7 * t + phase) + taper * (t - 0.5)


def make_body(grid: Grid, rng: np.random.Generator) -> Body:
    """A lumpy ellipse whose size and position vary smoothly along the slices."""
    n_slices, rows, cols = grid.shape
    # 60-80 % of the in-plane field wide, flatter front-to-back, like a pelvis/thigh slab
    half_w = rng.uniform(0.30, 0.40) * cols
    cy = rows * rng.uniform(0.44, 0.48)  # above centre: the table lies below the body
    room = (rows - cy - 10) / 1.25  # leave air and the table below the widest, lumpiest slice
    half_h = min(rng.uniform(0.55, 0.80) * half_w, room)
    cx = cols * rng.uniform(0.48, 0.52)
    scale = slice_profile(rng, n_slices, 0.06)[:, None, None]
    drift = rng.uniform(-0.02, 0.02) * cols * np.linspace(-1, 1, n_slices)[:, None, None]
    dy = (grid.y - cy) / (half_h * scale)
    dx = (grid.x - cx - drift) / (half_w * scale)
    theta = np.arctan2(dy, dx)
    wobble = 1.0
    for k in (2, 3, 4):  # low-order harmonics: a lumpy outline, not a perfect ellipse
        wobble = wobble + rng.uniform(0.0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = (np.sqrt(dy**2 + dx**2) / wobble).astype(np.float32)
    return Body(rho, theta, cy, cx, half_h, half_w, scale, drift)


def make_bones(grid: Grid, rng: np.random.Generator, body: Body) -> list[Bone]:
    """One femur-like bone, or two side by side, drifting slowly along the slices."""
    n_slices, rows, cols = grid.shape
    offsets = [0.0] if rng.integers(1, 3) == 1 else [-0.42, 0.42]
    scale, drift = body.scale[:, 0, 0], body.drift[:, 0, 0]
    bones = []
    for offset in offsets:
        # ~40-55 mm across at 5 mm voxels (femoral neck scale); >= 3 px so marrow exists
        base = max(3.0, rng.uniform(0.04, 0.055) * min(rows, cols))
        radius = base * slice_profile(rng, n_slices, 0.08)
        cx = body.cx + drift + (offset * scale + rng.uniform(-0.08, 0.08)) * body.half_w
        cy = body.cy + rng.uniform(-0.25, 0.15) * body.half_h * scale
        cortex = max(1.5, 0.35 * base)  # a third of the radius; thinner blurs below 1000 HU
        bones.append(Bone(cy=cy, cx=cx, radius=radius, cortex=cortex))
    return bones


def bone_distance(grid: Grid, bone: Bone) -> np.ndarray:
    """Distance in pixels of every voxel from the bone centre in its slice."""
    dy = grid.y - bone.cy[:, None, None].astype(np.float32)
    dx = grid.x - bone.cx[:, None, None].astype(np.float32)
    return np.sqrt(dy**2 + dx**2)


def bone_masks(grid: Grid, bones: list[Bone], margin: float) -> tuple[np.ndarray, ...]:
    """(bone, marrow, bone grown by margin pixels) masks of all bones."""
    bone, marrow, grown = (np.zeros(grid.shape, dtype=bool) for _ in range(3))
    for spec in bones:
        dist, radius = bone_distance(grid, spec), spec.radius[:, None, None]
        bone |= dist < radius
        marrow |= dist < radius - spec.cortex
        grown |= dist < radius + margin
    return bone, marrow, grown


def fat_septa(grid: Grid, rng: np.random.Generator, bones: list[Bone]) -> np.ndarray:
    """Thin curved fat planes between muscle compartments, fanning out from the bones."""
    septa = np.zeros(grid.shape, dtype=bool)
    for bone in bones:
        dist = bone_distance(grid, bone) + np.float32(1e-3)
        angle = np.arctan2(grid.y - bone.cy[:, None, None], grid.x - bone.cx[:, None, None])
        twisted = angle - np.float32(0.004) * dist**1.5  # planes curve as they leave the bone
        outside = dist > bone.radius[:, None, None] + 2
        for _ in range(int(rng.integers(2, 5))):
            gap = (twisted - rng.uniform(-np.pi, np.pi) + np.pi) % np.float32(2 * np.pi) - np.pi
            septa |= (np.abs(gap) * dist < 0.55) & outside  # ~1 px wide at any distance
    return septa


def vessels(grid: Grid, rng: np.random.Generator, bones: list[Bone]) -> np.ndarray:
    """Small tubes beside each bone, muscle-like on non-contrast CT, that mimic small lesions."""
    mask = np.zeros(grid.shape, dtype=bool)
    for bone in bones:
        angle = rng.uniform(-np.pi, np.pi)
        for side in (0.0, 0.9):  # an artery and its vein side by side
            dist = bone.radius + rng.uniform(3.0, 6.0) + side * 2.2
            cy = bone.cy + dist * np.sin(angle + side * 0.25)
            cx = bone.cx + dist * np.cos(angle + side * 0.25)
            radius = rng.uniform(1.0, 1.8)
            d2 = (grid.y - cy[:, None, None]) ** 2 + (grid.x - cx[:, None, None]) ** 2
            mask |= d2 < radius**2
    return mask


def tumour_blob(
    grid: Grid, rng: np.random.Generator, allowed: np.ndarray, body: Body, lumps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular ellipsoid's largest piece inside `allowed`, and its normalised depth."""
    n_slices, rows, cols = grid.shape
    attempts = 30
    for attempt in range(attempts):
        shrink = 1.0 - 0.5 * attempt / attempts  # later attempts try smaller tumours
        # diameter ~10-25 % of the field, >= 5 px; 5-15 of 40 slices, at least 3 slices
        radius = max(2.5, rng.uniform(0.065, 0.14) * min(rows, cols) * shrink)
        half_z = max(1.6, rng.uniform(0.06, 0.16) * n_slices)
        cz = rng.uniform(half_z, n_slices - 1 - half_z)
        angle, reach = rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 0.6)
        cy = body.cy + reach * body.half_h * np.sin(angle)
        cx = body.cx + reach * body.half_w * np.cos(angle)
        ry, rx = radius * rng.uniform(0.75, 1.25, size=2)
        depth = np.sqrt(
            ((grid.z - cz) / half_z) ** 2 + ((grid.y - cy) / ry) ** 2 + ((grid.x - cx) / rx) ** 2
        )
        whole = (depth + 0.22 * lumps) < 1.0
        blob = whole & allowed
        # mostly inside the muscle: a blob cut into a crescent by bone or fat is rejected,
        # less strictly as attempts run out in cramped (tiny) volumes
        kept = 0.85 if attempt < attempts // 2 else 0.6 if attempt < 3 * attempts // 4 else 0.4
        if blob.sum() < 20 or blob.sum() < kept * whole.sum():
            continue
        blob = largest_component(blob, BLOB_CONNECTIVITY)
        if np.flatnonzero(blob.any(axis=(1, 2))).size >= 3:
            return blob, depth
    return fallback_blob(grid, allowed, lumps)


def fallback_blob(
    grid: Grid, allowed: np.ndarray, lumps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Last resort in cramped (tiny) volumes: a small blob at the most interior allowed voxel."""
    dist = ndimage.distance_transform_edt(allowed)
    dist[[0, -1]] = 0  # centre off the end slices, so the blob can span three slices
    cz, cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
    radius = max(1.5, min(float(dist[cz, cy, cx]) + 0.5, 0.08 * min(grid.shape[1:])))
    depth = np.sqrt(
        ((grid.z - cz) / 1.6) ** 2 + ((grid.y - cy) / radius) ** 2 + ((grid.x - cx) / radius) ** 2
    )
    blob = ((depth + 0.1 * lumps) < 1.0) & allowed
    if not blob.any():
        raise SarcomaSegError(f"phantom: no room for a tumour in a volume of shape {grid.shape}")
    return largest_component(blob, BLOB_CONNECTIVITY), depth


def make_tumours(
    grid: Grid, rng: np.random.Generator, allowed: np.ndarray, body: Body
) -> tuple[np.ndarray, np.ndarray]:
    """One or two separate tumours; returns the union mask and each voxel's normalised depth."""
    mask = np.zeros(grid.shape, dtype=bool)
    depth = np.full(grid.shape, 2.0, dtype=np.float32)
    lumps = smooth_noise(rng, grid.shape, (1.0, 3.0, 3.0))  # low-frequency outline noise
    for index in range(int(rng.integers(1, 3))):
        free = allowed & ~ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=2)
        try:
            blob, blob_depth = tumour_blob(grid, rng, free, body, lumps)
        except SarcomaSegError:
            if index == 0:
                raise
            break  # a second tumour that does not fit is simply left out
        mask |= blob
        depth = np.where(blob, blob_depth, depth)
    return mask, depth


def make_anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    """All tissue masks of one patient: body layers, bones, septa, vessels and tumours."""
    body = make_body(grid, rng)
    skin_width = 1.0 / (body.half_w * body.scale)  # one pixel in normalised radius
    # subcutaneous fat 8-16 % of the radius, thicker on one side
    fat = rng.uniform(0.08, 0.16) * (1 + 0.35 * np.sin(body.theta + rng.uniform(0, 2 * np.pi)))
    muscle = body.rho < 1.0 - fat
    bones = make_bones(grid, rng, body)
    bone, marrow, near_bone = bone_masks(grid, bones, margin=2.0)  # tumours keep off the cortex
    septa = fat_septa(grid, rng, bones) & muscle & ~bone
    vessel = vessels(grid, rng, bones) & muscle & ~bone
    inner_muscle = body.rho < 1.0 - fat - 2.0 * skin_width  # and off the fat layer
    tumour, depth = make_tumours(grid, rng, inner_muscle & ~near_bone, body)
    inside = body.rho < 1.0
    skin = inside & (body.rho > 1.0 - skin_width)
    return Anatomy(inside, skin, muscle, bone, marrow, septa, vessel, tumour, depth)


def paint_ct(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """CT in HU (int16): tissue values and textures, partial-volume blur, table, scanner noise."""
    shape = anatomy.body.shape
    muscle_hu = rng.uniform(35.0, 55.0)
    fat_hu = rng.uniform(-115.0, -85.0)
    ct = np.full(shape, AIR_HU, dtype=np.float32)
    ct = np.where(anatomy.body, fat_hu + 8.0 * smooth_noise(rng, shape, 2.0), ct)
    ct = np.where(anatomy.skin, 20.0, ct)
    muscle_texture = 4.0 * smooth_noise(rng, shape, (0.5, 1.5, 1.5))
    ct = np.where(anatomy.muscle, muscle_hu + muscle_texture, ct)
    ct = np.where(anatomy.septa, fat_hu + 20.0, ct)  # thin planes are part-averaged with muscle
    ct = np.where(anatomy.vessel, muscle_hu + rng.uniform(15.0, 30.0), ct)
    cortex_hu = rng.uniform(1100.0, 1600.0)  # ~1000-1500 HU once blurred with marrow
    marrow_hu = rng.uniform(300.0, 650.0) + 40.0 * smooth_noise(rng, shape, 1.0)
    ct = np.where(anatomy.bone, np.where(anatomy.marrow, marrow_hu, cortex_hu), ct)

    contrast = rng.uniform(
        45.0, 70.0
    )  # modest, like an enhancing sarcoma: visible, not a threshold
    rim = 8.0 * (np.clip(anatomy.depth, 0, 1) - 0.6)  # mild rim enhancement, darker core
    texture = rng.uniform(6.0, 12.0) * smooth_noise(rng, shape, (0.7, 1.2, 1.2))
    ct = np.where(anatomy.tumour, muscle_hu + contrast + rim + texture, ct)

    ct = ndimage.gaussian_filter(ct, (0.0, 0.6, 0.6))  # partial-volume blur within each slice
    ct = add_table(ct, rng, anatomy.body)  # after the blur, which would wash a thin strip out
    ct = ct + rng.uniform(8.0, 14.0) * smooth_noise(
        rng, shape, (0.0, 0.5, 0.5)
    )  # 5 mm slices: low noise
    return np.clip(np.rint(ct), *HU_SCALE).astype(np.int16)  # as scanners store CT


def add_table(ct: np.ndarray, rng: np.random.Generator, body: np.ndarray) -> np.ndarray:
    """A thin bright scanner-table strip a few pixels below the lowest body row, in every slice."""
    _, rows, cols = ct.shape
    top = min(int(np.flatnonzero(body.any(axis=(0, 2))).max()) + int(rng.integers(3, 6)), rows - 4)
    margin = int(rng.uniform(0.03, 0.08) * cols)
    ct = ct.copy()
    ct[:, top : top + 2, margin : cols - margin] = rng.uniform(60.0, 180.0)
    ct[:, top + 3, margin + 2 : cols - margin - 2] = rng.uniform(-300.0, -150.0)  # its underside
    return ct


def make_pet(anatomy: Anatomy, rng: np.random.Generator) -> np.ndarray:
    """SUV-like PET: low uptake in the body, none in air, a smoothed hot spot in the tumour."""
    shape = anatomy.body.shape
    pet = np.zeros(shape, dtype=np.float32)
    pet[anatomy.body] = rng.uniform(0.6, 0.9)
    pet[anatomy.body & ~anatomy.muscle] = rng.uniform(0.4, 0.6)  # fat takes up less tracer
    pet[anatomy.marrow] = rng.uniform(1.0, 1.5)
    hot = anatomy.tumour
    pet[hot] = rng.uniform(4.0, 10.0) * (1.0 + 0.15 * smooth_noise(rng, shape, 1.0)[hot])
    pet = ndimage.gaussian_filter(pet, 1.2)  # PET resolution is several voxels
    pet *= 1.0 + 0.08 * smooth_noise(rng, shape, 0.7)  # multiplicative counting noise
    return np.where(anatomy.body, np.clip(pet, 0.0, None), 0.0).astype(np.float32)


def make_patient(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom patient: (CT in HU int16, PET SUV float32, tumour label uint8), all `shape`."""
    shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    anatomy = make_anatomy(make_grid(shape), rng)
    ct = paint_ct(anatomy, rng)
    pet = make_pet(anatomy, rng)
    return ct, pet, anatomy.tumour.astype(np.uint8)


def validate_request(n_patients: object, shape: object) -> tuple[int, tuple[int, int, int]]:
    """Check n_patients and shape before anything is written; return them normalised."""
    if isinstance(n_patients, bool) or not isinstance(n_patients, int | np.integer):
        raise SarcomaSegError(f"data.synthetic.n_patients={n_patients!r} must be an integer")
    if n_patients < 1:
        raise SarcomaSegError(f"data.synthetic.n_patients={n_patients!r} must be at least 1")
    ok = (
        isinstance(shape, list | tuple)
        and len(shape) == 3
        and all(isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape)
    )
    if not ok:
        raise SarcomaSegError(
            f"data.synthetic.shape={shape!r} must be 3 integers [slices, rows, cols]"
        )
    if any(s < m for s, m in zip(shape, MIN_SHAPE, strict=True)):
        raise SarcomaSegError(
            f"data.synthetic.shape={list(shape)!r} is too small; need slices >= {MIN_SHAPE[0]}"
            f" and rows, cols >= {MIN_SHAPE[1]}"
        )
    return int(n_patients), (int(shape[0]), int(shape[1]), int(shape[2]))


def patient_ids(n_patients: int) -> list[str]:
    """Synthetic patient ids SYN_001, SYN_002, ..."""
    return [f"SYN_{i:03d}" for i in range(1, n_patients + 1)]


def clinical_row(patient_id: str, rng: np.random.Generator) -> dict[str, object]:
    """Plausible clinical columns for one synthetic patient."""
    return {
        "Patient ID": patient_id,
        "Sex": str(rng.choice(["M", "F"])),
        "Age": int(rng.integers(20, 86)),
        "Site of primary STS": str(rng.choice(["thigh", "pelvis", "buttock", "leg"])),
        "Histological type": str(
            rng.choice(["Liposarcoma", "Leiomyosarcoma", "MFH", "Synovial sarcoma"])
        ),
        "Grade": str(rng.choice(["Low", "Intermediate", "High"])),
        "Treatment": str(rng.choice(["Surgery + RT", "Surgery + RT + CT", "Surgery"])),
    }


def write_h5(path: Path, volumes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Write {patient: (ct, pet, label)} into the three Kaggle groups at path, atomically."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as h5:
            groups = [h5.create_group(name) for name in KAGGLE_GROUPS]
            for patient_id, arrays in volumes.items():
                for group, array in zip(groups, arrays, strict=True):
                    # track_times=False keeps the file byte-identical for the same seed
                    group.create_dataset(
                        patient_id, data=array, compression="gzip", shuffle=True, track_times=False
                    )
        os.chmod(tmp_name, 0o644)  # mkstemp makes files owner-only; the data set is not secret
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def write_study_list(path: Path, rows: list[dict[str, object]]) -> None:
    """Write the clinical table with a `Patient ID` column, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(STUDY_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_phantom_set(
    out_dir: Path, n_patients: int, shape: tuple[int, int, int], seed: int
) -> list[Path]:
    """Write `lab_petct_vox_5.00mm.h5` and `study_list.csv` with n phantom patients into out_dir."""
    n_patients, shape = validate_request(n_patients, shape)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SarcomaSegError(f"base.seed={seed!r} must be a non-negative integer")
    volumes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rows = []
    for index, patient_id in enumerate(patient_ids(n_patients), start=1):
        rng = np.random.default_rng([seed, index])  # per patient: adding patients keeps the rest
        volumes[patient_id] = make_patient(rng, shape)
        rows.append(clinical_row(patient_id, rng))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5_path, csv_path = out_dir / KAGGLE_H5, out_dir / STUDY_LIST_NAME
    write_h5(h5_path, volumes)
    write_study_list(csv_path, rows)
    return [h5_path, csv_path]
