"""Atlas/1.0 packages as typed, validated values.

An atlas arrives as a manifest (``atlas.json``) plus the files of its package:
``policies/*.json`` and ``actions/*.json`` (each a single object or a list,
merged after the manifest's own lists in file-name order) and the context files
its packs reference. :func:`parse_package` takes the package as a mapping of
relative path to bytes, so this module does no I/O; :func:`parse_atlas` takes a
manifest object and the context files' text.

Every problem is an :class:`~cra.errors.AtlasError` naming a JSON Pointer (into
the merged manifest, or into the package file it came from) and a reason. A file
a manifest references that is not in the package is an error, never a skip.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cra.errors import AtlasError
from cra.protocol.canonical import canonical_json, parse_json, sha256_hex
from cra.protocol.validation import validate

__all__ = [
    "RESERVED_PREFIX",
    "RISK_TIERS",
    "ActionSpec",
    "Atlas",
    "AtlasRef",
    "CapabilitySpec",
    "ContextPackSpec",
    "PolicySpec",
    "parse_atlas",
    "parse_package",
]

RISK_TIERS: tuple[str, ...] = ("low", "medium", "high", "critical")
#: Policy ids CRA records for itself (default deny, built-in checks) start with this.
RESERVED_PREFIX = "cra:"
_MANIFEST = "atlas.json"


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One policy as declared. ``index`` is its position in declaration order."""

    policy_id: str
    type: str
    priority: int
    actions: tuple[str, ...] | None
    conditions: Mapping[str, Any]
    parameters: Mapping[str, Any]
    index: int
    name: str | None = None
    description: str | None = None

    @property
    def path(self) -> str:
        return f"/policies/{self.index}"


@dataclass(frozen=True, slots=True)
class ActionSpec:
    action_id: str
    name: str
    description: str
    risk_tier: str = "low"
    idempotent: bool = False
    requires_confirmation: bool = False
    timeout_seconds: int = 30
    parameters_schema: Mapping[str, Any] | None = None
    returns_schema: Mapping[str, Any] | None = None
    rate_limit: Mapping[str, int] | None = None
    executor: str | None = None
    index: int = 0

    def to_allowed_action(self) -> dict[str, Any]:
        """The CARP ``AllowedAction`` object for this action."""
        out: dict[str, Any] = {
            "action_id": self.action_id,
            "name": self.name,
            "description": self.description,
        }
        if self.parameters_schema is not None:
            out["parameters_schema"] = self.parameters_schema
        if self.returns_schema is not None:
            out["returns_schema"] = self.returns_schema
        out["risk_tier"] = self.risk_tier
        out["requires_confirmation"] = self.requires_confirmation
        out["idempotent"] = self.idempotent
        if self.rate_limit is not None:
            out["rate_limit"] = dict(self.rate_limit)
        return out


@dataclass(frozen=True, slots=True)
class CapabilitySpec:
    capability_id: str
    name: str
    description: str | None
    actions: tuple[str, ...]
    context_packs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContextPackSpec:
    pack_id: str
    name: str
    files: tuple[str, ...]
    priority: int = 100
    description: str | None = None
    conditions: Mapping[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    keywords: tuple[str, ...] = ()
    always: bool = False
    index: int = 0


@dataclass(frozen=True, slots=True)
class AtlasRef:
    """The atlas a decision was made under: id, version and package digest."""

    atlas_id: str
    version: str
    digest: str


@dataclass(frozen=True, slots=True)
class Atlas:
    """A loaded, validated atlas. ``digest`` names the exact policy package."""

    atlas_id: str
    version: str
    name: str
    description: str
    manifest: Mapping[str, Any]
    policies: tuple[PolicySpec, ...]
    actions: tuple[ActionSpec, ...]
    capabilities: tuple[CapabilitySpec, ...]
    context_packs: tuple[ContextPackSpec, ...]
    files: Mapping[str, str]
    digest: str
    source: str | None = None
    #: The WebAssembly modules of ``wasm`` policies, by package path (binary or WAT text, as stored).
    modules: Mapping[str, bytes] = field(default_factory=dict)
    #: For a package: where merged list items came from ("/policies/5" -> "policies/x.json#/1").
    origins: Mapping[str, str] = field(default_factory=dict)
    #: What errors about the manifest itself name as their source.
    manifest_source: str | None = None

    def locate(self, error: AtlasError) -> AtlasError:
        """The same error, naming the package file and pointer the problem is in."""
        return _relocate(error, self.origins, self.source, self.manifest_source)

    def action(self, action_id: str) -> ActionSpec | None:
        for a in self.actions:
            if a.action_id == action_id:
                return a
        return None

    @property
    def redaction(self) -> Mapping[str, Any] | None:
        value = self.manifest.get("redaction")
        return value if isinstance(value, Mapping) else None


def _unique(items: list[Any], key: str, section: str, source: str | None) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        ident = item[key]
        if ident in seen:
            raise AtlasError(
                f"/{section}/{i}/{key}",
                f"duplicate {key} {ident!r} (first declared at /{section}/{seen[ident]})",
                source=source,
            )
        seen[ident] = i


def _safe_relative(path: str) -> bool:
    if not path or path.startswith("/") or "\\" in path:
        return False
    norm = posixpath.normpath(path)
    return norm == path and not norm.startswith("..") and norm != "."


def parse_atlas(
    manifest: Mapping[str, Any],
    files: Mapping[str, str | bytes] | None = None,
    *,
    source: str | None = None,
    origins: Mapping[str, str] | None = None,
    manifest_source: str | None = None,
) -> Atlas:
    """Validate ``manifest`` and build an :class:`Atlas`.

    ``files`` maps package paths (relative, POSIX separators) to their text or
    UTF-8 bytes. Every context file the manifest references must be there and
    be UTF-8 text; other entries are ignored.
    """
    files = dict(files or {})
    validate("atlas-manifest.cra", manifest, source=source)
    try:
        m: dict[str, Any] = json.loads(json.dumps(manifest, allow_nan=False))  # a private deep copy
    except (TypeError, ValueError) as exc:
        raise AtlasError("", f"the manifest holds a value that is not JSON: {exc}", source=source) from None

    policies_raw: list[dict[str, Any]] = m.get("policies", [])
    actions_raw: list[dict[str, Any]] = m.get("actions", [])
    caps_raw: list[dict[str, Any]] = m.get("capabilities", [])
    packs_raw: list[dict[str, Any]] = m.get("context_packs", [])
    _unique(policies_raw, "policy_id", "policies", source)
    _unique(actions_raw, "action_id", "actions", source)
    _unique(caps_raw, "capability_id", "capabilities", source)
    _unique(packs_raw, "pack_id", "context_packs", source)
    for i, p in enumerate(policies_raw):
        if p["policy_id"].startswith(RESERVED_PREFIX):
            reason = f"the {RESERVED_PREFIX!r} prefix is reserved for CRA's own ids"
            raise AtlasError(f"/policies/{i}/policy_id", reason, source=source)

    action_ids = {a["action_id"] for a in actions_raw}
    pack_ids = {p["pack_id"] for p in packs_raw}
    for i, cap in enumerate(caps_raw):
        for j, aid in enumerate(cap.get("actions", [])):
            if aid not in action_ids:
                raise AtlasError(
                    f"/capabilities/{i}/actions/{j}",
                    f"capability lists action {aid!r}, which the atlas does not declare",
                    source=source,
                )
        for j, pid in enumerate(cap.get("context_packs", [])):
            if pid not in pack_ids:
                raise AtlasError(
                    f"/capabilities/{i}/context_packs/{j}",
                    f"capability lists context pack {pid!r}, which the atlas does not declare",
                    source=source,
                )

    used_files: dict[str, str] = {}
    for i, pack in enumerate(packs_raw):
        for j, path in enumerate(pack["files"]):
            pointer = f"/context_packs/{i}/files/{j}"
            if not _safe_relative(path):
                raise AtlasError(
                    pointer,
                    f"context file path {path!r} must be relative, normalised and inside the package",
                    source=source,
                )
            if path not in files:
                raise AtlasError(pointer, f"context file {path!r} does not exist in the atlas package", source=source)
            content = files[path]
            if isinstance(content, bytes):
                try:
                    content = content.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise AtlasError(
                        pointer, f"context file {path!r} is not UTF-8 text (byte {exc.start})", source=source
                    ) from None
            used_files[path] = content

    used_modules: dict[str, bytes] = {}
    for i, p in enumerate(policies_raw):
        if p["type"] == "wasm":
            used_modules.update(_module_file(p, f"/policies/{i}/parameters/module", files, source))

    policies = tuple(
        PolicySpec(
            policy_id=p["policy_id"],
            type=p["type"],
            priority=p.get("priority", 0),
            actions=tuple(p["actions"]) if "actions" in p else None,
            conditions=p.get("conditions", {}),
            parameters=p.get("parameters", {}),
            index=i,
            name=p.get("name"),
            description=p.get("description"),
        )
        for i, p in enumerate(policies_raw)
    )
    actions = tuple(
        ActionSpec(
            action_id=a["action_id"],
            name=a["name"],
            description=a["description"],
            risk_tier=a.get("risk_tier", "low"),
            idempotent=a.get("idempotent", False),
            requires_confirmation=a.get("requires_confirmation", False),
            timeout_seconds=a.get("timeout_seconds", 30),
            parameters_schema=a.get("parameters_schema"),
            returns_schema=a.get("returns_schema"),
            rate_limit=_rate_limit(a, i, source),
            executor=a.get("executor"),
            index=i,
        )
        for i, a in enumerate(actions_raw)
    )
    capabilities = tuple(
        CapabilitySpec(
            capability_id=c["capability_id"],
            name=c["name"],
            description=c.get("description"),
            actions=tuple(c.get("actions", [])),
            context_packs=tuple(c.get("context_packs", [])),
        )
        for c in caps_raw
    )
    packs = tuple(
        ContextPackSpec(
            pack_id=p["pack_id"],
            name=p["name"],
            files=tuple(p["files"]),
            priority=p.get("priority", 100),
            description=p.get("description"),
            conditions=p.get("conditions", {}),
            max_tokens=p.get("max_tokens"),
            keywords=tuple(p.get("keywords", [])),
            always=p.get("always", False),
            index=i,
        )
        for i, p in enumerate(packs_raw)
    )
    hashed: dict[str, Any] = {"manifest": m, "files": {k: sha256_hex(v) for k, v in sorted(used_files.items())}}
    if used_modules:  # atlases without modules keep the digest they always had
        hashed["modules"] = {k: sha256_hex(v) for k, v in sorted(used_modules.items())}
    digest = "sha256:" + sha256_hex(canonical_json(hashed))
    return Atlas(
        atlas_id=m["atlas_id"],
        version=m["version"],
        name=m["name"],
        description=m["description"],
        manifest=m,
        policies=policies,
        actions=actions,
        capabilities=capabilities,
        context_packs=packs,
        files=used_files,
        modules=used_modules,
        digest=digest,
        source=source,
        origins=dict(origins or {}),
        manifest_source=manifest_source or source,
    )


def _module_file(
    policy: Mapping[str, Any], pointer: str, files: Mapping[str, str | bytes], source: str | None
) -> dict[str, bytes]:
    """The module a ``wasm`` policy names in ``parameters.module``: a file of the package."""
    path = policy.get("parameters", {}).get("module")
    if not isinstance(path, str):
        raise AtlasError(pointer, "a wasm policy names its module file here (a path inside the package)", source=source)
    if not _safe_relative(path):
        raise AtlasError(
            pointer, f"module path {path!r} must be relative, normalised and inside the package", source=source
        )
    if path not in files:
        raise AtlasError(pointer, f"module file {path!r} does not exist in the atlas package", source=source)
    content = files[path]
    return {path: content if isinstance(content, bytes) else content.encode("utf-8")}


def _rate_limit(action: Mapping[str, Any], index: int, source: str | None) -> dict[str, int] | None:
    rl = action.get("rate_limit")
    if rl is None:
        return None
    for key in ("max_calls", "window_seconds"):
        if key not in rl:
            raise AtlasError(f"/actions/{index}/rate_limit/{key}", "is required", source=source)
    extra = sorted(set(rl) - {"max_calls", "window_seconds"})
    if extra:
        raise AtlasError(f"/actions/{index}/rate_limit/{extra[0]}", "is not an allowed property here", source=source)
    return {"max_calls": rl["max_calls"], "window_seconds": rl["window_seconds"]}


def _load_json(name: str, data: bytes, source: str | None) -> Any:
    return parse_json(data, source=_join(source, name), error=AtlasError)


def _section_docs(package: Mapping[str, bytes], section: str, source: str | None) -> list[tuple[str, dict[str, Any]]]:
    """Objects from ``section/*.json`` in file-name order, each with its origin."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(p for p in package if p.startswith(section + "/") and p.endswith(".json")):
        if "/" in name[len(section) + 1 :]:
            continue  # only the top level of the section folder
        doc = _load_json(name, package[name], source)
        items = doc if isinstance(doc, list) else [doc]
        for k, item in enumerate(items):
            pointer = f"/{k}" if isinstance(doc, list) else ""
            if not isinstance(item, dict):
                raise AtlasError(pointer, "must be an object", source=_join(source, name))
            out.append((f"{name}#{pointer}", item))
    return out


def parse_package(package: Mapping[str, bytes], *, source: str | None = None) -> Atlas:
    """Build an :class:`Atlas` from a package's files (relative path -> bytes).

    ``atlas.json`` is required. Objects in ``policies/*.json`` and
    ``actions/*.json`` are appended to the manifest's lists in file-name order,
    and an error inside one of them names that file. Files under ``tests/`` are
    not part of the atlas (see ``cra.runtime.atlas_tests``) and do not affect
    its digest.
    """
    if _MANIFEST not in package:
        raise AtlasError("", f"the package has no {_MANIFEST}", source=source)
    manifest = _load_json(_MANIFEST, package[_MANIFEST], source)
    if not isinstance(manifest, dict):
        raise AtlasError("", "the manifest must be a JSON object", source=_join(source, _MANIFEST))
    origins: dict[str, str] = {}
    for section in ("policies", "actions"):
        extra = _section_docs(package, section, source)
        if extra:
            own = manifest.get(section, [])
            if not isinstance(own, list):
                raise AtlasError(f"/{section}", "must be an array", source=_join(source, _MANIFEST))
            for k, (origin, _) in enumerate(extra):
                origins[f"/{section}/{len(own) + k}"] = origin
            manifest[section] = [*own, *(item for _, item in extra)]
    manifest_source = _join(source, _MANIFEST)
    try:
        return parse_atlas(manifest, package, source=source, origins=origins, manifest_source=manifest_source)
    except AtlasError as exc:
        raise _relocate(exc, origins, source, manifest_source) from None


def _relocate(
    error: AtlasError, origins: Mapping[str, str], source: str | None, manifest_source: str | None
) -> AtlasError:
    parts = error.path.split("/")
    origin = origins.get("/".join(parts[:3])) if len(parts) >= 3 else None
    if origin is not None:
        file_name, _, pointer = origin.partition("#")
        rest = "".join("/" + part for part in parts[3:])
        return type(error)(pointer + rest, error.reason, source=_join(source, file_name))
    return type(error)(error.path, error.reason, source=manifest_source)


def _join(source: str | None, name: str) -> str:
    return f"{source}/{name}" if source else name
