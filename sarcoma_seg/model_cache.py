"""A local cache of registry models: `models:/<name>/<version>` is fetched once into
$SARCOMA_SEG_CACHE (default ~/.cache/sarcoma-seg), keyed by the tracking store, name and version
(a registered version never changes), and checked against the SHA-256 recorded when it was
fetched each time it is reused. Aliases, `latest` and runs:/ URIs are fetched every time."""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sarcoma_seg.digest import file_sha256

CACHE_ENV = "SARCOMA_SEG_CACHE"
MANIFEST = "cache.json"  # file name -> SHA-256 of everything the cached folder holds
VERSIONED = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[0-9]+)/?$")


def cache_root() -> Path:
    """$SARCOMA_SEG_CACHE, else ~/.cache/sarcoma-seg."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sarcoma-seg")


def cache_key(uri: str, store: str) -> str | None:
    """The folder name of a fixed registry version in this tracking store; None: not cacheable."""
    match = VERSIONED.match(uri)
    if match is None:
        return None
    store_id = hashlib.sha256(store.encode()).hexdigest()[:12]  # two stores may share names
    name = re.sub(r"[^A-Za-z0-9._-]", "_", match["name"])
    return f"{store_id}/{name}/{match['version']}"


def folder_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file directly in folder (the manifest excepted)."""
    return {
        p.name: file_sha256(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def verified(folder: Path) -> bool:
    """True if folder holds exactly the files its manifest names, with those hashes."""
    try:
        recorded = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == folder_digests(folder)


def cached_model(uri: str, store: str, fetch: Callable[[Path], Path]) -> Path | None:
    """The cached folder of a registry version, fetched with fetch(scratch folder) -> folder
    holding the files on a miss or when the cached copy fails its hashes; None when the URI
    names no fixed version (the caller fetches it uncached)."""
    key = cache_key(uri, store)
    if key is None:
        return None
    target = cache_root() / key
    if verified(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as scratch:
        fetched = fetch(Path(scratch) / "download")
        staged = Path(scratch) / "staged"
        staged.mkdir()
        for item in fetched.iterdir():
            if item.is_file():
                shutil.copy2(item, staged / item.name)
        (staged / MANIFEST).write_text(json.dumps(folder_digests(staged), indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a stale or tampered copy
        try:
            staged.replace(target)  # whole or not at all: a crash leaves no half-cached model
        except OSError:
            if not verified(target):  # not another predict that cached it meanwhile
                raise
    return target
