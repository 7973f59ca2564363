"""DVC stage `download`: fetch the raw data named by params.yaml `data` into data/raw/.

Run as `python -m stages.download` from the project root; it writes the raw files and a
manifest.json (names, sizes, sha256, digest) and prints one summary line, never credentials.
"""

from pathlib import Path
from typing import Any

from sarcoma_seg import sources
from sarcoma_seg.errors import run_cli
from sarcoma_seg.settings import Data, load_settings


def download(data: Data, seed: int, out_dir: Path) -> dict[str, Any]:
    """Fetch the configured source into out_dir and return its manifest."""
    return sources.fetch(data, seed, out_dir)


def summary(manifest: dict[str, Any]) -> str:
    """One line naming the source, the file count and the content digest."""
    return (
        f"download: source={manifest['source']} dataset={manifest['dataset']}"
        f" files={len(manifest['files'])} digest={manifest['digest']}"
    )


def main() -> None:
    """Read params.yaml in the current directory and write the raw folder (paths.raw)."""
    settings = load_settings()
    print(summary(download(settings.data, settings.base.seed, settings.paths.raw)))


if __name__ == "__main__":
    run_cli(main)
