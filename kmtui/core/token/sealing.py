"""Secrets kept in the database (TOTP seeds) sealed under a key that never leaves the token."""

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
