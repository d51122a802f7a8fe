"""What the token room returns: plain data, safe to hand to any layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SlotInfo:
    slot_id: int
    description: str
    manufacturer: str
    token_present: bool
    token_label: str = ""
    token_serial: str = ""
    token_initialized: bool = False


@dataclass(frozen=True)
class ObjectInfo:
    """One token object as read defensively: any attribute may be missing."""

    handle: int
    object_class: str
    cka_id: bytes
    label: str
    label_is_utf8: bool
    key_type: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    private: bool = False  # made in a logged-in session: no one without the PIN can create it
    trusted: bool = False  # made by the security officer: no user can set CKA_TRUSTED

    @property
    def believable(self) -> bool:
        """Whether kmtui may take this object for its own: anyone can create public objects
        without the PIN, so only private or trusted ones, and public keys (public by nature,
        each proved by its fingerprint or a signature)."""
        return self.private or self.trusted or self.object_class == "PUBLIC_KEY"


@dataclass(frozen=True)
class GeneratedKey:
    cka_id: bytes
    object_classes: tuple[str, ...]
    kcv: str = ""
    fingerprint: str = ""
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
