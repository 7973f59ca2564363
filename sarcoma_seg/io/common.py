"""What every format module shares: the Scan that predict's readers return, and the small
helpers of their error messages and folder walks."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sarcoma_seg.errors import SarcomaSegError, brief, one_line


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


MAX_JSON_BYTES = 1 << 20  # configs, cards, summaries are a few kB; a larger file is not parsed


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file another program may have written: at most max_bytes read (a 200 MB config is
    refused before it is parsed), its name in every error, nesting too deep for the parser
    refused like any other invalid JSON."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise SarcomaSegError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise SarcomaSegError(f"{path}: more than {max_bytes} bytes; not a file this reads")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        reason = "nested too deeply" if isinstance(exc, RecursionError) else one_line(exc)
        raise SarcomaSegError(f"{path}: invalid JSON ({brief(reason, 160)})") from None


def check_inside(path: Path, root: Path, what: str = "data.path") -> Path:
    """The rule for links: a file (or a folder on its way) may be a symbolic link only to
    somewhere inside root; one that leads outside is refused, never read."""
    real, base = Path(path).resolve(), Path(root).resolve()
    if real != base and base not in real.parents:
        raise SarcomaSegError(
            f"{path}: a link to {real}, outside {what} {root}; copy the file in instead"
        )
    return path


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
