"""Self-checks of one key version on the token: they exercise the key and change nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core.token import templates
from kmtui.core.token.objects import spki_fingerprint

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm


class SelfTest:
    """Runs a random test vector through a key as its purpose allows; each check passes or fails."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def run(self, cka_id: bytes, algorithm: str, purpose: str) -> dict[str, str]:
        """Exercise one key version with a random test vector; each check is 'pass' or 'fail'."""
        spec = templates.algorithm(algorithm)
        return self._hsm.run(self._checks, cka_id, spec, templates.Purpose(purpose))

    def _checks(
        self, cka_id: bytes, spec: templates.AlgorithmSpec, purpose: templates.Purpose
    ) -> dict[str, str]:
        session = self._hsm.require_session()
        objects = self._hsm.objects
        vector = bytes(session.generate_random(256))
        out: dict[str, str] = {}

        def check(name: str, fn: Callable[[], bool]) -> None:
            try:
                out[name] = "pass" if fn() else "fail"
            except p11.PKCS11Error:  # any exception from a verify is a failed check
                out[name] = "fail"

        if spec.symmetric:
            key = objects.get(cka_id, ObjectClass.SECRET_KEY)
            if purpose == templates.Purpose.ENCRYPT:

                def round_trip() -> bool:
                    nonce = bytes(session.generate_random(96))
                    sealed = key.encrypt(
                        vector, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce)
                    )
                    return (
                        bytes(
                            key.decrypt(
                                sealed,
                                mechanism=Mechanism.AES_GCM,
                                mechanism_param=GCMParams(nonce),
                            )
                        )
                        == vector
                    )

                check("encrypt-decrypt", round_trip)
            elif purpose == templates.Purpose.WRAP:
                check("wrap-unwrap", lambda: self._hsm.wrapping.probe(session, key))
                check("unwrap-in-clear-refused", lambda: self._hsm.wrapping.refused_in_clear(key))
            else:

                def mac() -> bool:
                    tag = key.sign(vector, mechanism=Mechanism.SHA256_HMAC)
                    return bool(key.verify(vector, tag, mechanism=Mechanism.SHA256_HMAC))

                check("mac-verify", mac)
            out["kcv"] = objects.kcv_of(key)
        elif purpose == templates.Purpose.WRAP:  # a recipient's public key: no private half here
            public = objects.get(cka_id, ObjectClass.PUBLIC_KEY)
            check(
                "wrap-only", lambda: not public[Attribute.ENCRYPT] and bool(public[Attribute.WRAP])
            )
            out["fingerprint"] = spki_fingerprint(
                KeyType.RSA, objects.public_attributes(public, KeyType.RSA)
            )
        else:
            private = objects.get(cka_id, ObjectClass.PRIVATE_KEY)
            public = objects.get(cka_id, ObjectClass.PUBLIC_KEY)
            if spec.key_type == KeyType.RSA:
                mech, data = Mechanism.SHA256_RSA_PKCS, vector
            else:  # SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest with CKM_ECDSA
                mech, data = Mechanism.ECDSA, hashlib.sha256(vector).digest()

            def sign_verify() -> bool:
                signature = private.sign(data, mechanism=mech)
                return bool(public.verify(data, signature, mechanism=mech))

            check("sign-verify", sign_verify)
            key_type = public[Attribute.KEY_TYPE]
            out["fingerprint"] = spki_fingerprint(
                key_type, objects.public_attributes(public, key_type)
            )
        return out
