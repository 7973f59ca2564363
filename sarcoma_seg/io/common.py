"""What every format module shares: the Scan that predict's readers return, and the small
helpers of their error messages and folder walks."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sarcoma_seg.errors import SarcomaSegError


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


def where_of(path: Path, patient_id: str) -> str:
    """The prefix of an error message: file and patient."""
    return f"{path} (patient {patient_id})"


def visible_entries(folder: Path) -> list[Path]:
    """Entries of a folder, sorted, without hidden ones (.DS_Store, ._ files from macOS)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def require_folder(folder: Path) -> Path:
    """The folder, if it exists and holds anything."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SarcomaSegError(f"{folder}: data folder not found")
    if not visible_entries(folder):
        raise SarcomaSegError(f"{folder}: data folder is empty")
    return folder
