"""The filter languages of the Keys and Audit panes, parsed into the store's query arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kmtui.core.models import KeyState

_TERM = re.compile(r"(\w+):(\S*)")


def _terms(text: str, names: set[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Named terms (`name:value`) and the other words; a name outside `names` is a word."""
    named: dict[str, str] = {}
    words: list[str] = []
    for part in text.split():
        match = _TERM.fullmatch(part)
        if match and (names is None or match.group(1).lower() in names):
            named[match.group(1).lower()] = match.group(2)
        else:
            words.append(part)
    return named, words


@dataclass(frozen=True)
class KeyFilter:
    """What the keys filter box asks for; every term is answered by store.keys.page in SQL."""

    label_prefix: str = ""
    state: str | None = None
    algorithm: str = ""
    policy: str | None = None
    tag: str = ""
    id_prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> KeyFilter:
        named, words = _terms(text, {"state", "alg", "algorithm", "policy", "tag", "id"})
        state = named.get("state", "").lower() or None
        if state is not None and state not in {s.value for s in KeyState}:
            raise ValueError(f"unknown state {state!r}; states: {', '.join(KeyState)}")
        return cls(
            label_prefix=" ".join(words),
            state=state,
            algorithm=named.get("alg", named.get("algorithm", "")),
            policy=named.get("policy") or None,
            tag=named.get("tag", ""),
            id_prefix=named.get("id", "").lower(),
        )

    def query(self) -> dict[str, Any]:
        """Keyword arguments for store.keys.page."""
        return {
            "state": self.state,
            "label_prefix": self.label_prefix or None,
            "algorithm": self.algorithm or None,
            "policy": self.policy,
            "tag": self.tag or None,
            "id_prefix": self.id_prefix or None,
        }


@dataclass(frozen=True)
class AuditFilter:
    """What the audit filter box asks for; AuditLog.events answers it, paging by seq."""

    key_id: str | None = None
    operator: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None

    @classmethod
    def parse(cls, text: str) -> AuditFilter:
        named, words = _terms(text)
        if words:
            raise ValueError("audit filters are key:, op:, action:, outcome:, since:, until: terms")
        unknown = sorted(set(named) - {"key", "op", "action", "outcome", "since", "until"})
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r}")
        since = named.get("since", "").replace(" ", "T")
        until = named.get("until", "").replace(" ", "T")
        return cls(
            key_id=named.get("key") or None,
            operator=named.get("op") or None,
            action=named.get("action") or None,
            outcome=named.get("outcome", "").lower() or None,
            since=since or None,
            # "until:2026-05" means to the end of May: every timestamp starting so sorts below.
            until=(until + "\uffff") if until else None,
        )

    def query(self) -> dict[str, Any]:
        """Keyword arguments for AuditLog.events."""
        return {
            "key_id": self.key_id,
            "actor_contains": self.operator,
            "action": self.action,
            "outcome": self.outcome,
            "since": self.since,
            "until": self.until,
        }
