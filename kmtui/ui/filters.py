"""The filter languages of the Keys and Audit panes, turned into SQL where an index helps."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from kmtui.core.models import Key, KeyState

_TERM = re.compile(r"(\w+):(\S*)")


def _terms(text: str) -> tuple[dict[str, str], list[str]]:
    named: dict[str, str] = {}
    words: list[str] = []
    for part in text.split():
        match = _TERM.fullmatch(part)
        if match:
            named[match.group(1).lower()] = match.group(2)
        else:
            words.append(part)
    return named, words


@dataclass(frozen=True)
class KeyFilter:
    """Label prefix and state go to SQL (indexed); the rest is checked on each fetched page."""

    label_prefix: str = ""
    state: str | None = None
    algorithm: str = ""
    policy: str = ""
    tag: str = ""
    id_prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> KeyFilter:
        named, words = _terms(text)
        state = named.get("state", "").lower() or None
        if state is not None and state not in {s.value for s in KeyState}:
            raise ValueError(f"unknown state {state!r}; states: {', '.join(KeyState)}")
        return cls(
            label_prefix=" ".join(words),
            state=state,
            algorithm=named.get("alg", named.get("algorithm", "")).upper(),
            policy=named.get("policy", ""),
            tag=named.get("tag", ""),
            id_prefix=named.get("id", "").lower(),
        )

    @property
    def sql_only(self) -> bool:
        return not (self.algorithm or self.policy or self.tag or self.id_prefix)

    def matches(self, key: Key) -> bool:
        return (
            (not self.algorithm or key.algorithm.upper().startswith(self.algorithm))
            and (not self.policy or key.policy == self.policy)
            and (not self.tag or self.tag in key.tags)
            and (not self.id_prefix or key.id.startswith(self.id_prefix))
        )


@dataclass(frozen=True)
class AuditFilter:
    """Every term becomes a bound SQL condition; paging stays a keyset seek on seq."""

    where: str = ""
    params: tuple[Any, ...] = field(default_factory=tuple)
    key_id: str = ""

    @classmethod
    def parse(cls, text: str) -> AuditFilter:
        named, words = _terms(text)
        if words:
            raise ValueError("audit filters are key:, op:, action:, outcome:, since:, until: terms")
        conditions: list[str] = []
        params: list[Any] = []
        unknown = sorted(set(named) - {"key", "op", "action", "outcome", "since", "until"})
        if unknown:
            raise ValueError(f"unknown filter {unknown[0]!r}")
        if named.get("key"):
            conditions.append("key_id = ?")
            params.append(named["key"])
        if named.get("op"):
            conditions.append("('+' || actor || '+') LIKE ? ESCAPE '\\'")
            params.append("%+" + re.sub(r"([\\%_])", r"\\\1", named["op"]) + "+%")
        if named.get("action"):
            conditions.append("action = ?")
            params.append(named["action"])
        if named.get("outcome"):
            conditions.append("outcome = ?")
            params.append(named["outcome"].lower())
        if named.get("since"):
            conditions.append("ts >= ?")
            params.append(named["since"].replace(" ", "T"))
        if named.get("until"):
            conditions.append("ts <= ?")
            params.append(named["until"].replace(" ", "T") + "\uffff")
        return cls(" AND ".join(conditions), tuple(params), named.get("key", ""))
