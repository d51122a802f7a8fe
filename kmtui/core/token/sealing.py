"""What the database keeps under keys that never leave the token: TOTP seeds sealed with AES-GCM,
and the registry's security rows authenticated by HMAC-SHA256 (kmtui.core.audit.seals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import GCMParams, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.token import templates

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm

SEAL_KEY_ID = b"kmtui:sys-seal:1"
"""CKA_ID of the token key that seals TOTP seeds; `kmtui:sys-*` ids are kmtui's own objects."""
REGISTRY_KEY_ID = b"kmtui:sys-registry:1"
"""CKA_ID of the token HMAC key that authenticates the registry's security rows."""


class Sealing:
    """AES-GCM under the token's sealing key, made on first use."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM under the token's sealing key: 12-byte nonce, then ciphertext and tag."""

        def run() -> bytes:
            key = self._key()
            nonce = bytes(self._hsm.require_session().generate_random(96))
            sealed = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
            )
            return nonce + bytes(sealed)

        return self._hsm.run(run)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of `seal`; any failure (tampered blob, wrong aad) is one clear refusal."""

        def run() -> bytes:
            key = self._key()
            try:
                return bytes(
                    key.decrypt(
                        blob[12:],
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(blob[:12], aad),
                    )
                )
            except p11.PKCS11Error:  # SoftHSM reports a bad tag as a bare GeneralError
                raise errors.HsmError(
                    "A sealed secret failed its integrity check.",
                    "The database record was altered or belongs to another token.",
                ) from None

        return self._hsm.run(run)

    def _key(self) -> Any:
        objects = self._hsm.objects
        cached = objects.cached(SEAL_KEY_ID, ObjectClass.SECRET_KEY)
        if cached is not None:
            return cached
        if objects.lookup(SEAL_KEY_ID, ObjectClass.SECRET_KEY) is None:
            self._hsm.keygen.make(
                templates.build("AES-256", "encrypt", cka_id=SEAL_KEY_ID, label="kmtui sealing key")
            )
        return objects.get(SEAL_KEY_ID, ObjectClass.SECRET_KEY)

    # -- the registry's rows: HMAC-SHA256 under a token key, many per PKCS#11 hop ------------

    def macs(self, messages: list[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each message under the registry key (made on first use)."""

        def run() -> list[bytes]:
            key = self._registry_key()
            return [bytes(key.sign(m, mechanism=Mechanism.SHA256_HMAC)) for m in messages]

        return self._hsm.run(run)

    def macs_ok(self, pairs: list[tuple[bytes, bytes]]) -> list[bool]:
        """Whether each (message, tag) verifies; any error from the token is a failed check."""

        def run() -> list[bool]:
            key = self._registry_key()
            out = []
            for message, tag in pairs:
                try:
                    out.append(bool(key.verify(message, tag, mechanism=Mechanism.SHA256_HMAC)))
                except p11.PKCS11Error:
                    out.append(False)
            return out

        return self._hsm.run(run)

    def _registry_key(self) -> Any:
        objects = self._hsm.objects
        cached = objects.cached(REGISTRY_KEY_ID, ObjectClass.SECRET_KEY)
        if cached is not None:
            return cached
        if objects.lookup(REGISTRY_KEY_ID, ObjectClass.SECRET_KEY) is None:
            self._hsm.keygen.make(
                templates.build(
                    "HMAC-SHA256", "mac", cka_id=REGISTRY_KEY_ID, label="kmtui registry key"
                )
            )
        return objects.get(REGISTRY_KEY_ID, ObjectClass.SECRET_KEY)
