"""The audit anchors kept on the token: the key that signs checkpoints and the head object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from kmtui.core.token import templates
from kmtui.core.token.errors import GONE
from kmtui.core.token.objects import public_key

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm

AUDIT_KEY_ID = b"kmtui:sys-audit:1"
"""CKA_ID of the EC P-256 key pair that signs audit checkpoints."""
HEAD_LABEL = "kmtui-audit-head"
"""CKA_LABEL of the data object mirroring the audit head (data objects refuse CKA_ID)."""
PIN_LABEL = "kmtui-registry"
"""CKA_LABEL of the data object naming the one registry this token serves (its registry id)."""


class AuditSigner:
    """Signs audit checkpoints with a token key and mirrors the audit head in a token object."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm
        self._heads: dict[str, Any] = {}

    def forget(self) -> None:
        """Drop the remembered head objects: their handles die with the session."""
        self._heads.clear()

    def ensure_audit_key(self) -> str:
        """Create the audit signing key pair on first use; returns its public key as PEM."""

        def run() -> str:
            objects = self._hsm.objects
            if objects.lookup(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY) is None:
                self._hsm.keygen.make(
                    templates.build(
                        "EC-P256", "sign", cka_id=AUDIT_KEY_ID, label="kmtui audit signing key"
                    )
                )
            public = objects.get(AUDIT_KEY_ID, ObjectClass.PUBLIC_KEY)
            attrs = objects.public_attributes(public, KeyType.EC)
            pem: bytes = public_key(KeyType.EC, attrs).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return pem.decode("ascii")

        return self._hsm.run(run)

    def sign_audit(self, message: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(message), DER; hashed here (SoftHSM lacks ECDSA_SHA256)."""

        def run() -> bytes:
            private = self._hsm.objects.get(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY)
            raw = bytes(private.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA))
            half = len(raw) // 2
            return encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )

        return self._hsm.run(run)

    def read_head(self, registry: str) -> bytes | None:
        """The newest audit head kept on the token (several exist only after a crash mid-update)."""

        def run() -> bytes | None:
            values = [bytes(obj[Attribute.VALUE]) for obj in self._head_objects(registry)]
            return max(values, key=_head_seq) if values else None

        return self._hsm.run(run)

    def write_head(self, registry: str, value: bytes) -> None:
        """Create the new head object first, then destroy the older ones (a crash loses nothing).

        The object written last is remembered, so a session searches the token only once.
        """

        def run() -> None:
            cached = self._heads.get(registry)
            older = [cached] if cached is not None else list(self._head_objects(registry))
            self._heads[registry] = self._hsm.require_session().create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.LABEL: f"{HEAD_LABEL}:{registry}",
                    Attribute.APPLICATION: "kmtui",
                    Attribute.VALUE: value,
                }
            )
            for obj in older:
                with suppress(*GONE):  # another process already replaced it
                    obj.destroy()

        self._hsm.run(run)

    def pinned(self) -> list[str]:
        """The registry ids this token is pinned to (one, unless someone planted more)."""

        def run() -> list[str]:
            found = self._hsm.require_session().get_objects(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.LABEL: PIN_LABEL,
                    Attribute.PRIVATE: True,
                }
            )
            return sorted({bytes(obj[Attribute.VALUE]).decode("ascii", "replace") for obj in found})

        return self._hsm.run(run)

    def pin(self, registry: str) -> None:
        """Pin the token to a registry (at its first log-in; never changed by kmtui after)."""

        def run() -> None:
            self._hsm.require_session().create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.LABEL: PIN_LABEL,
                    Attribute.APPLICATION: "kmtui",
                    Attribute.VALUE: registry.encode("ascii"),
                }
            )

        self._hsm.run(run)

    def _head_objects(self, registry: str) -> Iterator[Any]:
        yield from self._hsm.require_session().get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: f"{HEAD_LABEL}:{registry}"}
        )


def _head_seq(value: bytes) -> int:
    try:
        return int(json.loads(value)["seq"])
    except (ValueError, KeyError, TypeError):
        return -1
