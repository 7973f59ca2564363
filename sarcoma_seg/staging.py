"""Outputs written into a staging folder beside their place and swapped in whole: a failed or
interrupted stage leaves the last good output as it was (dvc.yaml marks these `persist: true`,
so DVC does not delete them before the stage runs)."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NEW, OLD = "new", "old"  # staging-name kinds: what is being written, what is being replaced


def staging_prefix(target: Path, kind: str) -> str:
    """The name prefix of target's staging siblings of one kind (hidden, beside target)."""
    return f".{target.name}.{kind}-"


def remove_stale(target: Path) -> None:
    """Remove staging leftovers of target from a run that was killed (SIGKILL, power loss)."""
    if not target.parent.is_dir():
        return
    for kind in (NEW, OLD):
        for leftover in target.parent.glob(f"{staging_prefix(target, kind)}*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def replace_dir(new: Path, target: Path) -> None:
    """Put directory new in target's place; the old target is removed only after the swap."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=staging_prefix(target, OLD), dir=target.parent))
        old.rmdir()
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """An empty folder to write target's whole content into; swapped in when the block ends
    without error, removed on any exception (SIGTERM is one under errors.run_cli)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target, NEW), dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; it becomes an ordinary folder
        yield staging
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file beside path and move it in: readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    handle, name = tempfile.mkstemp(prefix=staging_prefix(path, NEW), dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(name, 0o644)  # mkstemp makes it owner-only
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
