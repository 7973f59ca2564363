"""DVC stage `download`: fetch the raw data named by params.yaml `data` into data/raw/.

Run as `python -m stages.download` from the project root; it writes the raw files and a
manifest.json (names, sizes, sha256, digest) and prints one summary line, never credentials.
"""

from pathlib import Path
from typing import Any

from sarcoma_seg import sources
from sarcoma_seg.errors import SarcomaSegError, run_cli
from sarcoma_seg.params import load_params


def download(data_params: dict[str, Any], seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch the configured source into out_dir and return its manifest."""
    return sources.fetch(data_params, seed, out_dir)


def summary(manifest: dict[str, Any]) -> str:
    """One line naming the source, the file count and the content digest."""
    return (
        f"download: source={manifest['source']} dataset={manifest['dataset']}"
        f" files={len(manifest['files'])} digest={manifest['digest']}"
    )


def main() -> None:
    """Read params.yaml in the current directory and write the raw folder (paths.raw)."""
    params = load_params()
    data_params = params.get("data")
    if not isinstance(data_params, dict):
        raise SarcomaSegError("params.yaml: section data is missing or not a mapping")
    seed = params.get("base", {}).get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SarcomaSegError(f"params.yaml: base.seed={seed!r} must be an integer")
    print(summary(download(data_params, seed, Path(params["paths"]["raw"]))))


if __name__ == "__main__":
    run_cli(main)
