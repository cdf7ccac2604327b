"""Choosing context blocks for a goal.

A pack is *eligible* when its conditions hold (the same condition vocabulary as
policies; an unknown or deferred result excludes it, because context is a grant).
An eligible pack is *chosen* when any of these is true:

* it is marked ``always``;
* a context hint names it (its ``pack_id``), or every word of a hint is one of
  its keywords;
* a required capability of the task lists it;
* the goal shares a word with its keywords: the words of its ``pack_id``,
  ``name`` and ``description`` and its explicit ``keywords``.

Words are compared whole and case-insensitively, without stemming, so that the
rule behaves the same for Arabic and English; list word forms in ``keywords``.
Each file of a chosen pack becomes one block, ordered by pack priority (higher
first), then declaration order. Content is redacted before it leaves, and a
pack's ``max_tokens`` truncates its last blocks, marking them, never dropping them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cra.context.redact import Redactor, compile_redactor
from cra.errors import AtlasError, PolicyError
from cra.policy.conditions import TRUE, Condition, compile_conditions, evaluate_conditions
from cra.policy.decision import EvalRequest
from cra.protocol.atlas import Atlas, ContextPackSpec

__all__ = [
    "ContextBlock",
    "ContextCatalog",
    "ContextSelection",
    "Redaction",
    "compile_context",
    "estimate_tokens",
    "words",
]

# fmt: off
_STOPWORDS: Final = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "for", "from", "has", "have", "i", "in", "is", "it",
    "me", "my", "need", "of", "on", "or", "our", "please", "the", "this", "to", "us", "we", "what", "when",
    "with", "you", "your",
))
# fmt: on
_WORD = re.compile(r"\w+", re.UNICODE)
_CONTENT_TYPES: Final = {".md": "text/markdown", ".markdown": "text/markdown", ".json": "application/json"}


def words(text: str) -> set[str]:
    """The comparable words of ``text``: lower-cased, without stopwords or one-letter words."""
    return {w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if len(w) > 1 and w not in _STOPWORDS}


def estimate_tokens(text: str) -> int:
    """A deterministic token estimate: a quarter of the UTF-8 length, rounded up."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def _truncate(text: str, tokens: int) -> str:
    """The longest prefix of ``text`` within ``tokens``, cut at a line end when possible."""
    budget = tokens * 4
    data = text.encode("utf-8")
    if len(data) <= budget:
        return text
    cut = data[:budget].decode("utf-8", errors="ignore")
    newline = cut.rfind("\n")
    return cut[: newline + 1] if newline > 0 else cut


@dataclass(frozen=True, slots=True)
class ContextBlock:
    block_id: str
    source: str
    content_type: str
    content: str
    priority: int
    token_estimate: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The CARP ``ContextBlock`` object."""
        return {
            "block_id": self.block_id,
            "source": self.source,
            "content_type": self.content_type,
            "content": self.content,
            "priority": self.priority,
            "token_estimate": self.token_estimate,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class Redaction:
    """What was redacted from one block."""

    block_id: str
    source: str
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ContextSelection:
    blocks: tuple[ContextBlock, ...]
    redactions: tuple[Redaction, ...]
    reasons: Mapping[str, str]  # pack_id -> why it was chosen or not


@dataclass(frozen=True, slots=True)
class _Pack:
    spec: ContextPackSpec
    conditions: tuple[Condition, ...]
    keywords: frozenset[str]


@dataclass(frozen=True, slots=True)
class ContextCatalog:
    """An atlas's context packs, compiled for selection."""

    atlas: Atlas
    packs: tuple[_Pack, ...]
    redactor: Redactor
    capability_packs: Mapping[str, frozenset[str]]
    _redacted: dict[str, tuple[str, dict[str, int]]] = field(default_factory=dict, repr=False, compare=False)

    def redacted(self, path: str) -> tuple[str, dict[str, int]]:
        """A context file after redaction, and the counts per kind (computed once per file)."""
        hit = self._redacted.get(path)
        if hit is None:
            hit = self._redacted[path] = self.redactor.redact(self.atlas.files[path])
        return hit

    def select(
        self,
        request: EvalRequest,
        *,
        goal: str,
        hints: Iterable[str] = (),
        capabilities: Iterable[str] = (),
    ) -> ContextSelection:
        goal_words = words(goal)
        hint_list = [h for h in hints if h]
        wanted_by_caps: set[str] = set()
        for cap in capabilities:
            wanted_by_caps |= self.capability_packs.get(cap, frozenset())
        chosen: list[_Pack] = []
        reasons: dict[str, str] = {}
        for pack in self.packs:
            pid = pack.spec.pack_id
            if evaluate_conditions(pack.conditions, request) != TRUE:
                reasons[pid] = "conditions do not hold"
                continue
            if pack.spec.always:
                reasons[pid] = "always included"
            elif any(h == pid or (words(h) and words(h) <= pack.keywords) for h in hint_list):
                reasons[pid] = "named by a context hint"
            elif pid in wanted_by_caps:
                reasons[pid] = "listed by a required capability"
            elif goal_words & pack.keywords:
                reasons[pid] = "goal mentions " + ", ".join(sorted(goal_words & pack.keywords))
            else:
                reasons[pid] = "not relevant to the goal"
                continue
            chosen.append(pack)
        chosen.sort(key=lambda p: (-p.spec.priority, p.spec.index))

        blocks: list[ContextBlock] = []
        redactions: list[Redaction] = []
        for pack in chosen:
            remaining = pack.spec.max_tokens
            for path in pack.spec.files:
                block_id = f"{pack.spec.pack_id}:{path}"
                content, counts = self.redacted(path)
                meta: dict[str, Any] = {"pack_id": pack.spec.pack_id, "file": path}
                if remaining is not None:
                    full = estimate_tokens(content)
                    if full > remaining:
                        content = _truncate(content, remaining)
                        meta["truncated"] = True
                        meta["omitted_tokens"] = full - estimate_tokens(content)
                    remaining = max(0, remaining - estimate_tokens(content))
                if counts:
                    meta["redactions"] = dict(sorted(counts.items()))
                    redactions.append(Redaction(block_id, self.atlas.atlas_id, dict(sorted(counts.items()))))
                suffix = path[path.rfind(".") :].lower() if "." in path else ""
                blocks.append(
                    ContextBlock(
                        block_id=block_id,
                        source=self.atlas.atlas_id,
                        content_type=_CONTENT_TYPES.get(suffix, "text/plain"),
                        content=content,
                        priority=pack.spec.priority,
                        token_estimate=estimate_tokens(content),
                        metadata=meta,
                    )
                )
        return ContextSelection(tuple(blocks), tuple(redactions), reasons)


def compile_context(atlas: Atlas) -> ContextCatalog:
    """Compile an atlas's packs: their conditions, keywords and redaction rules."""
    capabilities = {c.capability_id: frozenset(c.actions) for c in atlas.capabilities}
    packs = []
    for spec in atlas.context_packs:
        if "capabilities" in spec.conditions:
            reason = (
                "a context pack has no action for 'capabilities' to test; "
                "list the pack in the capability's context_packs instead"
            )
            raise atlas.locate(AtlasError(f"/context_packs/{spec.index}/conditions/capabilities", reason))
        try:
            conds = compile_conditions(
                spec.conditions, f"/context_packs/{spec.index}/conditions", capabilities=capabilities
            )
        except PolicyError as exc:
            raise atlas.locate(exc) from None
        kw = words(spec.pack_id.replace("-", " ").replace("_", " ").replace(".", " "))
        kw |= words(spec.name) | words(spec.description or "")
        kw |= {k.casefold() for k in spec.keywords}
        packs.append(_Pack(spec, conds, frozenset(kw)))
    cap_packs = {c.capability_id: frozenset(c.context_packs) for c in atlas.capabilities}
    try:
        redactor = compile_redactor(atlas.redaction)
    except AtlasError as exc:
        raise atlas.locate(exc) from None
    return ContextCatalog(atlas, tuple(packs), redactor, cap_packs)
