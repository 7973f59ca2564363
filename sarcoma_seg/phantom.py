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

H5_NAME = "lab_petct_vox_5.00mm.h5"
STUDY_LIST_NAME = "study_list.csv"
GROUPS = ("ct_data", "pet_data", "label_data")
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
HU_CLIP = (-1024.0, 3071.0)  # 12-bit CT range as stored by scanners
MIN_SHAPE = (8, 32, 32)  # fewer slices or pixels cannot hold a multi-slice tumour beside bone


@dataclass(frozen=True)
class Grid:
    """Voxel coordinates of one volume, broadcastable as (slices, rows, cols)."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Bone:
    """One long bone: centre per slice and radii in pixels."""

    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray
    cortex: float


def make_grid(shape: tuple[int, int, int]) -> Grid:
    """Open index grids for a volume of shape (slices, rows, cols)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return Grid(z=z.astype(np.float32), y=y.astype(np.float32), x=x.astype(np.float32), shape=shape)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def slice_profile(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """A smooth per-slice factor around 1: a slow sine plus a linear taper along the limb."""
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    taper = rng.uniform(-amplitude, amplitude)
    return 1.0 + amplitude * np.sin(2 * np.pi * 0.7 * t + phase) + taper * (t - 0.5)


def body_radius(grid: Grid, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Normalised radius of a lumpy ellipse (<1 inside the body) and the body geometry."""
    n_slices, rows, cols = grid.shape
    # 60-80 % of the in-plane field wide, a little flatter front-to-back, as a pelvis/thigh slab
    half_w = rng.uniform(0.30, 0.40) * cols
    half_h = rng.uniform(0.55, 0.80) * half_w * rows / cols
    cy = rows * rng.uniform(0.44, 0.48)  # above centre: the table lies below the body
    cx = cols * rng.uniform(0.48, 0.52)
    scale = slice_profile(rng, n_slices, 0.06)[:, None, None]
    drift = rng.uniform(-0.02, 0.02) * cols * np.linspace(-1, 1, n_slices)[:, None, None]
    dy = (grid.y - cy) / (half_h * scale)
    dx = (grid.x - cx - drift) / (half_w * scale)
    theta = np.arctan2(dy, dx)
    wobble = 1.0
    for k in (2, 3, 4):  # low-order harmonics: a lumpy outline, not a perfect ellipse
        wobble = wobble + rng.uniform(0.0, 0.04) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rho = np.sqrt(dy**2 + dx**2) / wobble
    geometry = {"cy": cy, "cx": cx, "half_w": half_w, "half_h": half_h, "scale": scale}
    geometry["drift"] = drift
    geometry["theta"] = theta
    return rho.astype(np.float32), geometry


def make_bones(grid: Grid, rng: np.random.Generator, geom: dict) -> list[Bone]:
    """One femur-like bone, or two side by side, drifting slowly along the slices."""
    n_slices, rows, cols = grid.shape
    count = int(rng.integers(1, 3))
    offsets = [0.0] if count == 1 else [-0.42, 0.42]
    bones = []
    for offset in offsets:
        # ~40-55 mm across at 5 mm voxels (femoral neck scale); >= 3 px so marrow exists
        base = max(3.0, rng.uniform(0.04, 0.055) * rows)
        radius = base * slice_profile(rng, n_slices, 0.08)
        scale = geom["scale"][:, 0, 0]
        cx = geom["cx"] + geom["drift"][:, 0, 0] + offset * geom["half_w"] * scale
        cx = cx + rng.uniform(-0.08, 0.08) * geom["half_w"]
        cy = geom["cy"] + rng.uniform(-0.25, 0.15) * geom["half_h"] * scale
        cortex = max(1.0, 0.35 * base)  # cortical ring roughly a third of the radius
        bones.append(Bone(cy=cy, cx=cx, radius=radius, cortex=cortex))
    return bones


def bone_distance(grid: Grid, bone: Bone) -> np.ndarray:
    """Distance in pixels of every voxel from the bone centre in its slice."""
    dy = grid.y - bone.cy[:, None, None]
    dx = grid.x - bone.cx[:, None, None]
    return np.sqrt(dy**2 + dx**2)


def fat_septa(grid: Grid, rng: np.random.Generator, bones: list[Bone]) -> np.ndarray:
    """Thin curved fat planes between muscle compartments, fanning out from the bones."""
    septa = np.zeros(grid.shape, dtype=bool)
    for bone in bones:
        dy = grid.y - bone.cy[:, None, None].astype(np.float32)
        dx = grid.x - bone.cx[:, None, None].astype(np.float32)
        dist = np.sqrt(dy**2 + dx**2) + np.float32(1e-3)
        twisted = np.arctan2(dy, dx) - np.float32(0.004) * dist**1.5  # planes curve outwards
        outside = dist > bone.radius[:, None, None] + 2
        for _ in range(int(rng.integers(2, 5))):
            gap = (twisted - rng.uniform(-np.pi, np.pi) + np.pi) % np.float32(2 * np.pi) - np.pi
            septa |= (np.abs(gap) * dist < 0.55) & outside
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
    grid: Grid, rng: np.random.Generator, allowed: np.ndarray, geom: dict, lumps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One irregular ellipsoid inside `allowed` (largest connected piece) and its normalised depth."""
    n_slices, rows, cols = grid.shape
    attempts = 40
    for attempt in range(attempts):
        shrink = 1.0 - 0.5 * attempt / attempts  # later attempts try smaller tumours
        # diameter ~10-25 % of the field; 5-15 of 40 slices, at least 3 slices
        radius = rng.uniform(0.05, 0.125) * rows * shrink
        half_z = max(1.6, rng.uniform(0.06, 0.18) * n_slices)
        cz = rng.uniform(half_z, n_slices - 1 - half_z)
        angle = rng.uniform(-np.pi, np.pi)
        reach = rng.uniform(0.1, 0.6)
        cy = geom["cy"] + reach * geom["half_h"] * np.sin(angle)
        cx = geom["cx"] + reach * geom["half_w"] * np.cos(angle)
        ry, rx = radius * rng.uniform(0.75, 1.25, size=2)
        depth = np.sqrt(
            ((grid.z - cz) / half_z) ** 2 + ((grid.y - cy) / ry) ** 2 + ((grid.x - cx) / rx) ** 2
        )
        whole = (depth + 0.22 * lumps) < 1.0
        blob = whole & allowed
        # mostly inside the muscle: a blob cut into a crescent by bone or fat is rejected
        if blob.sum() < 30 or blob.sum() < (0.85 if attempt < attempts // 2 else 0.6) * whole.sum():
            continue
        labels, _ = ndimage.label(blob)
        blob = labels == (1 + int(np.argmax(np.bincount(labels.ravel())[1:])))
        if np.flatnonzero(blob.any(axis=(1, 2))).size >= 3:
            return blob, depth
    raise SarcomaSegError(f"phantom: could not place a tumour in a volume of shape {grid.shape}")


def make_tumours(
    grid: Grid, rng: np.random.Generator, allowed: np.ndarray, geom: dict
) -> tuple[np.ndarray, np.ndarray]:
    """One or two separate tumours; returns the union mask and each voxel's normalised depth."""
    mask = np.zeros(grid.shape, dtype=bool)
    depth = np.full(grid.shape, 2.0, dtype=np.float32)
    wanted = int(rng.integers(1, 3))
    lumps = smooth_noise(rng, grid.shape, (1.0, 3.0, 3.0))  # low-frequency outline noise
    for index in range(wanted):
        free = allowed & ~ndimage.binary_dilation(mask, np.ones((3, 3, 3), bool), iterations=2)
        try:
            blob, blob_depth = tumour_blob(grid, rng, free, geom, lumps)
        except SarcomaSegError:
            if index == 0:
                raise
            break  # a second tumour that does not fit is simply left out
        mask |= blob
        depth = np.where(blob, blob_depth, depth)
    return mask, depth


def make_patient(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom patient: (CT in HU int16, PET SUV float32, tumour label uint8), all `shape`."""
    shape = tuple(int(s) for s in shape)
    grid = make_grid(shape)
    rho, geom = body_radius(grid, rng)
    body = rho < 1.0
    skin_width = 1.0 / (geom["half_w"] * geom["scale"])  # one pixel in normalised radius
    fat_fraction = rng.uniform(0.08, 0.16) * (1 + 0.35 * np.sin(geom["theta"] + rng.uniform(0, 6)))
    muscle_region = rho < 1.0 - fat_fraction
    bones = make_bones(grid, rng, geom)
    bone_dist = [bone_distance(grid, bone) for bone in bones]
    bone = np.zeros(shape, dtype=bool)
    marrow = np.zeros(shape, dtype=bool)
    for bone_spec, dist in zip(bones, bone_dist, strict=True):
        radius = bone_spec.radius[:, None, None]
        bone |= dist < radius
        marrow |= dist < radius - bone_spec.cortex
    septa = fat_septa(grid, rng, bones) & muscle_region & ~bone
    vessel = vessels(grid, rng, bones) & muscle_region & ~bone

    near_bone = np.zeros(shape, dtype=bool)
    for bone_spec, dist in zip(bones, bone_dist, strict=True):
        near_bone |= dist < bone_spec.radius[:, None, None] + 2.0  # keep tumours off the cortex
    inner_muscle = rho < 1.0 - fat_fraction - 2.0 * skin_width  # and off the fat layer
    tumour, depth = make_tumours(grid, rng, inner_muscle & ~near_bone, geom)

    muscle_hu = rng.uniform(35.0, 55.0)
    fat_hu = rng.uniform(-115.0, -85.0)
    ct = np.full(shape, AIR_HU, dtype=np.float32)
    ct[body] = fat_hu + 8.0 * smooth_noise(rng, shape, 2.0)[body]
    ct[rho > 1.0 - skin_width] = np.where(body, 20.0, AIR_HU)[rho > 1.0 - skin_width]
    muscle_texture = 4.0 * smooth_noise(rng, shape, (0.5, 1.5, 1.5))
    ct = np.where(muscle_region, muscle_hu + muscle_texture, ct)
    ct = np.where(septa, fat_hu + 20.0, ct)  # thin planes are partly volume-averaged with muscle
    ct = np.where(vessel, muscle_hu + rng.uniform(15.0, 30.0), ct)
    cortex_hu = rng.uniform(1000.0, 1500.0)
    marrow_hu = rng.uniform(300.0, 650.0) + 40.0 * smooth_noise(rng, shape, 1.0)
    ct = np.where(bone, np.where(marrow, marrow_hu, cortex_hu), ct)

    contrast = rng.uniform(25.0, 45.0)
    rim = 8.0 * (np.clip(depth, 0, 1) - 0.6)  # mild rim enhancement, darker core
    tumour_texture = rng.uniform(6.0, 12.0) * smooth_noise(rng, shape, (0.7, 1.2, 1.2))
    ct = np.where(tumour, muscle_hu + contrast + rim + tumour_texture, ct)

    ct = add_table(ct, rng, body)
    ct = ndimage.gaussian_filter(ct, (0.0, 0.6, 0.6))  # partial-volume blur within each slice
    noise_sigma = rng.uniform(10.0, 20.0)
    ct = ct + noise_sigma * smooth_noise(rng, shape, (0.0, 0.5, 0.5))
    ct_hu = np.clip(np.rint(ct), *HU_CLIP).astype(np.int16)

    pet = make_pet(rng, shape, body, fat_region=body & ~muscle_region, marrow=marrow, tumour=tumour)
    return ct_hu, pet, tumour.astype(np.uint8)


def add_table(ct: np.ndarray, rng: np.random.Generator, body: np.ndarray) -> np.ndarray:
    """A thin bright scanner-table strip a few pixels below the lowest body row, in every slice."""
    rows = ct.shape[1]
    body_rows = np.flatnonzero(body.any(axis=(0, 2)))
    top = min(int(body_rows.max()) + int(rng.integers(2, 5)), rows - 3)
    thickness = 2 if rows >= 64 else 1
    cols = ct.shape[2]
    margin = int(rng.uniform(0.03, 0.08) * cols)
    ct = ct.copy()
    ct[:, top : top + thickness, margin : cols - margin] = rng.uniform(60.0, 180.0)
    ct[:, top + thickness + 1, margin + 2 : cols - margin - 2] = rng.uniform(-300.0, -150.0)
    return ct


def make_pet(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    body: np.ndarray,
    fat_region: np.ndarray,
    marrow: np.ndarray,
    tumour: np.ndarray,
) -> np.ndarray:
    """SUV-like PET: low uptake in the body, none in air, a smoothed hot spot in the tumour."""
    pet = np.zeros(shape, dtype=np.float32)
    pet[body] = rng.uniform(0.6, 0.9)
    pet[fat_region] = rng.uniform(0.4, 0.6)  # fat takes up less tracer than muscle
    pet[marrow] = rng.uniform(1.0, 1.5)
    peak = rng.uniform(4.0, 10.0)
    pet[tumour] = peak * (1.0 + 0.15 * smooth_noise(rng, shape, 1.0)[tumour])
    pet = ndimage.gaussian_filter(pet, 1.2)  # PET resolution is several voxels
    pet *= 1.0 + 0.08 * smooth_noise(rng, shape, 0.7)  # multiplicative counting noise
    pet = np.where(body, np.clip(pet, 0.0, None), 0.0)
    return pet.astype(np.float32)


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
            groups = [h5.create_group(name) for name in GROUPS]
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
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(STUDY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_phantom_set(
    out_dir: Path, n_patients: int, shape: tuple[int, int, int], seed: int
) -> list[Path]:
    """Write `lab_petct_vox_5.00mm.h5` and `study_list.csv` with n phantom patients into out_dir."""
    n_patients, shape = validate_request(n_patients, shape)
    volumes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    rows = []
    for index, patient_id in enumerate(patient_ids(n_patients), start=1):
        rng = np.random.default_rng([seed, index])  # per patient: adding patients keeps the rest
        volumes[patient_id] = make_patient(rng, shape)
        rows.append(clinical_row(patient_id, rng))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h5_path, csv_path = out_dir / H5_NAME, out_dir / STUDY_LIST_NAME
    write_h5(h5_path, volumes)
    write_study_list(csv_path, rows)
    return [h5_path, csv_path]
