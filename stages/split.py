"""DVC stage `split`: assign patients (never slices) to train / val / test."""

import json

from sarcoma_seg.errors import run_cli
from sarcoma_seg.io.store import raw_patient_ids
from sarcoma_seg.settings import load_settings
from sarcoma_seg.split import make_split
from sarcoma_seg.staging import write_text_atomic


def main() -> None:
    """Read the patients in data/raw and write the split file."""
    settings = load_settings()
    seed = settings.base.seed
    result = make_split(raw_patient_ids(settings.paths.raw), settings.split, seed)
    text = json.dumps({"seed": seed, **result}, indent=2) + "\n"
    write_text_atomic(settings.paths.split, text)
    print(", ".join(f"{k}: {len(v)} patients" for k, v in result.items()))


if __name__ == "__main__":
    run_cli(main)
