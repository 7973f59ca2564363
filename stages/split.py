"""DVC stage `split`: assign patients (never slices) to train / val / test."""

import json
from pathlib import Path

from sarcoma_seg.errors import run_cli
from sarcoma_seg.params import load_params
from sarcoma_seg.split import make_split
from sarcoma_seg.staging import write_text_atomic
from sarcoma_seg.volumes import raw_patient_ids


def main() -> None:
    """Read the patients in data/raw and write the split file."""
    params = load_params()
    paths = params["paths"]
    patients = raw_patient_ids(Path(paths["raw"]))
    result = make_split(patients, params["split"], params["base"]["seed"])
    text = json.dumps({"seed": params["base"]["seed"], **result}, indent=2) + "\n"
    write_text_atomic(Path(paths["split"]), text)
    print(", ".join(f"{k}: {len(v)} patients" for k, v in result.items()))


if __name__ == "__main__":
    run_cli(main)
