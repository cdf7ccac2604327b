"""Loading atlases from the file system: a package directory or one JSON file.

This is the only place the runtime reads atlas files. It collects the bytes of
the package (the manifest, ``policies/*.json``, ``actions/*.json`` and every
context file the manifest references) and hands them to the pure parser.
Referenced files that do not exist, escape the package, or are too large are
left out of the mapping or refused, so the parser reports them precisely.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from cra.errors import AtlasError
from cra.protocol.atlas import Atlas, parse_atlas, parse_package
from cra.protocol.canonical import parse_json

__all__ = ["MAX_FILE_BYTES", "AtlasSource", "load_atlas", "read_package"]

MAX_FILE_BYTES: Final = 8 * 1024 * 1024
AtlasSource = Atlas | Mapping[str, Any] | str | os.PathLike[str]


def _read(root: Path, relative: str) -> bytes | None:
    """The bytes of ``root/relative`` if it is a regular file inside ``root``."""
    candidate = root / relative
    try:
        resolved = candidate.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    size = resolved.stat().st_size
    if size > MAX_FILE_BYTES:
        raise AtlasError("", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}", source=str(candidate))
    return resolved.read_bytes()


def _referenced(manifest: Any) -> list[str]:
    """Context and module file paths a (possibly malformed) manifest refers to."""
    out: list[str] = []
    packs = manifest.get("context_packs") if isinstance(manifest, dict) else None
    for pack in packs if isinstance(packs, list) else []:
        files = pack.get("files") if isinstance(pack, dict) else None
        out.extend(f for f in (files if isinstance(files, list) else []) if isinstance(f, str))
    policies = manifest.get("policies") if isinstance(manifest, dict) else None
    for policy in policies if isinstance(policies, list) else []:
        parameters = policy.get("parameters") if isinstance(policy, dict) else None
        module = parameters.get("module") if isinstance(parameters, dict) else None
        if isinstance(module, str):
            out.append(module)
    return out


def _context_files(root: Path, manifest: Any, package: dict[str, bytes]) -> None:
    for relative in _referenced(manifest):
        if relative not in package and not relative.startswith("/") and ".." not in relative.split("/"):
            data = _read(root, relative)
            if data is not None:
                package[relative] = data


def read_package(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read an atlas package directory into a mapping of relative path to bytes."""
    root = Path(path).resolve()
    if not root.is_dir():
        raise AtlasError("", "not an atlas package directory", source=str(path))
    manifest_bytes = _read(root, "atlas.json")
    if manifest_bytes is None:
        raise AtlasError("", "the package has no atlas.json", source=str(path))
    package: dict[str, bytes] = {"atlas.json": manifest_bytes}
    for section in ("policies", "actions"):
        folder = root / section
        if folder.is_dir():
            for child in sorted(folder.glob("*.json")):
                data = _read(root, f"{section}/{child.name}")
                if data is None:
                    reason = "not a readable file inside the package (a broken or escaping symlink, or a folder)"
                    raise AtlasError("", reason, source=str(child))
                package[f"{section}/{child.name}"] = data
    for name, data in list(package.items()):
        try:
            content = parse_json(data, source=None, error=AtlasError)
        except AtlasError:
            continue  # parse_package reports the precise error
        if name.startswith("policies/"):  # a policy file's wasm policies name module files too
            content = {"policies": content if isinstance(content, list) else [content]}
        _context_files(root, content, package)
    return package


def _load_file(path: Path) -> Atlas:
    """A single-file atlas; its context files are resolved next to it."""
    root = path.resolve().parent
    data = _read(root, path.name)
    if data is None:
        raise AtlasError("", "cannot read the atlas file", source=str(path))
    manifest = parse_json(data, source=str(path), error=AtlasError)
    if not isinstance(manifest, dict):
        raise AtlasError("", "the manifest must be a JSON object", source=str(path))
    files: dict[str, bytes] = {}
    _context_files(root, manifest, files)
    return parse_atlas(manifest, dict(files), source=str(path))


def load_atlas(source: AtlasSource, *, files: Mapping[str, str | bytes] | None = None) -> Atlas:
    """An :class:`Atlas` from a package directory, a JSON file, a manifest dict, or an Atlas.

    ``files`` supplies context files for a manifest given as a dict.
    """
    if isinstance(source, Atlas):
        return source
    if isinstance(source, Mapping):
        return parse_atlas(source, files or {}, source="<dict>")
    path = Path(source)
    if path.is_file():
        return _load_file(path)
    return parse_package(read_package(path), source=str(path))
