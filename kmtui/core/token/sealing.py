"""What the database keeps under keys that never leave the token: TOTP seeds sealed with AES-GCM
(or, where the token has no usable GCM, AES-CBC-PAD then HMAC-SHA256 over it: encrypt-then-MAC),
and the registry's security rows authenticated by HMAC-SHA256 (kmtui.core.audit.seals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pkcs11 import GCMParams, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.token import profile, templates

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm

SEAL_KEY_ID = b"kmtui:sys-seal:1"
"""CKA_ID of the token key that seals TOTP seeds; `kmtui:sys-*` ids are kmtui's own objects."""
SEAL_MAC_KEY_ID = b"kmtui:sys-seal-mac:1"
"""CKA_ID of the HMAC key that authenticates seeds sealed with AES-CBC-PAD (tokens without GCM)."""
REGISTRY_KEY_ID = b"kmtui:sys-registry:1"
"""CKA_ID of the token HMAC key that authenticates the registry's security rows."""


class Sealing:
    """Seeds sealed under the token's sealing key (made on first use), by the scheme its profile
    allows: AES-GCM, else AES-CBC-PAD + HMAC-SHA256; a token with neither is refused by name."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """GCM: 12-byte nonce, ciphertext and tag. CBC: 16-byte IV, ciphertext, then the 32-byte
        HMAC-SHA256 of (len(aad), aad, IV, ciphertext) under a second token key."""

        def run() -> bytes:
            key = self._key()
            if self._scheme() == profile.SEAL_GCM:
                nonce = bytes(self._hsm.require_session().generate_random(96))
                sealed = key.encrypt(
                    plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
                )
                return nonce + bytes(sealed)
            iv = bytes(self._hsm.require_session().generate_random(128))
            body = iv + bytes(
                key.encrypt(plaintext, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)
            )
            tag = self._mac_key().sign(_authenticated(aad, body), mechanism=Mechanism.SHA256_HMAC)
            return body + bytes(tag)

        return self._hsm.run(run)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of `seal`; any failure (tampered blob, wrong aad) is one clear refusal."""

        def run() -> bytes:
            key = self._key()
            try:
                if self._scheme() == profile.SEAL_GCM:
                    return bytes(
                        key.decrypt(
                            blob[12:],
                            mechanism=Mechanism.AES_GCM,
                            mechanism_param=GCMParams(blob[:12], aad),
                        )
                    )
                body, tag = blob[:-32], blob[-32:]
                if len(body) < 32 or not self._mac_key().verify(
                    _authenticated(aad, body), tag, mechanism=Mechanism.SHA256_HMAC
                ):
                    raise p11.SignatureInvalid()
                return bytes(
                    key.decrypt(
                        body[16:], mechanism=Mechanism.AES_CBC_PAD, mechanism_param=body[:16]
                    )
                )
            except p11.PKCS11Error:  # SoftHSM reports a bad tag as a bare GeneralError
                raise errors.HsmError(
                    "A sealed secret failed its integrity check.",
                    "The database record was altered or belongs to another token.",
                ) from None

        return self._hsm.run(run)

    def _scheme(self) -> str:
        scheme = self._hsm.profile.sealing
        if not scheme:
            raise errors.MechanismNotSupported(
                f"Token {self._hsm.name} cannot seal operator seeds: no AES-GCM and no "
                "AES-CBC-PAD+HMAC (its profile, `kmtui token info`).",
                "Use a token that offers one of them; nothing was sealed or read.",
            )
        return scheme

    def _mac_key(self) -> Any:
        return self._own_key(SEAL_MAC_KEY_ID, "HMAC-SHA256", "mac", "kmtui seal MAC key")

    def _key(self) -> Any:
        return self._own_key(SEAL_KEY_ID, "AES-256", "encrypt", "kmtui sealing key")

    def _own_key(self, cka_id: bytes, algorithm: str, purpose: str, label: str) -> Any:
        """One of kmtui's own keys, made on first use and remembered for the session."""
        objects = self._hsm.objects
        cached = objects.cached(cka_id, ObjectClass.SECRET_KEY)
        if cached is not None:
            return cached
        if objects.lookup(cka_id, ObjectClass.SECRET_KEY) is None:
            self._hsm.keygen.make(templates.build(algorithm, purpose, cka_id=cka_id, label=label))
        return objects.get(cka_id, ObjectClass.SECRET_KEY)

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
        return self._own_key(REGISTRY_KEY_ID, "HMAC-SHA256", "mac", "kmtui registry key")


def _authenticated(aad: bytes, body: bytes) -> bytes:
    """What the seal's HMAC covers: the aad's length and the aad, then the IV and ciphertext."""
    return len(aad).to_bytes(8, "big") + aad + body
