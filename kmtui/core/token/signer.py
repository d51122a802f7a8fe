"""The audit anchors kept on the token: the key that signs checkpoints and the head object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11

from kmtui.core import errors
from kmtui.core.token import templates
from kmtui.core.token.errors import GONE
from kmtui.core.token.objects import PUBLIC_VALUE_ATTRS, public_key

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm

AUDIT_KEY_ID = b"kmtui:sys-audit:1"
"""CKA_ID of the EC P-256 key pair that signs audit checkpoints."""
HEAD_LABEL = "kmtui-audit-head"
"""CKA_LABEL of the data object mirroring the audit head (data objects refuse CKA_ID)."""
PIN_LABEL = "kmtui-registry"
"""CKA_LABEL of the data object naming the one registry this token serves (its registry id)."""
HEAD_KEY_PREFIX = b"kmtui:sys-head:"
"""CKA_ID prefix (then the registry id) of the key whose label holds the head, on tokens that
keep no private data objects (NSS softokn): a private key object, which no one makes without
the PIN, that can do nothing (every usage false)."""
PIN_KEY_ID = b"kmtui:sys-pin:1"
"""CKA_ID of the key whose label pins the token to its registry, on the same tokens."""


class AuditSigner:
    """Signs audit checkpoints with a token key and mirrors the audit head in a token object."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm
        self._heads: dict[str, Any] = {}
        self._pem: str | None = None

    def forget(self) -> None:
        """Drop the remembered head objects and public key: they are proved once per session."""
        self._heads.clear()
        self._pem = None

    def ensure_audit_key(self, known: Sequence[str] = ()) -> str:
        """The audit key's public half as PEM, the pair created on first use.

        Proved, never just looked up: any token user can plant or delete public objects without
        the PIN, so the PEM returned is one that verifies a fresh signature by the private key:
        a public key under the audit key's id on the token, else one of `known` (those kmtui
        recorded earlier) when the token's was removed or replaced.
        """

        def run() -> str:
            if self._pem is None:
                if self._hsm.objects.lookup(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY) is None:
                    self._hsm.keygen.make(
                        templates.build(
                            "EC-P256", "sign", cka_id=AUDIT_KEY_ID, label="kmtui audit signing key"
                        )
                    )
                proven = self._proven(known)
                if proven is None:
                    raise errors.HsmError(
                        f"The audit key's public half is missing from token {self._hsm.name}, "
                        "and no public key kmtui recorded matches its private key.",
                        "Run `kmtui reconcile` and have the security officer find out who "
                        "removed or replaced it; checkpoints cannot be proved until then.",
                    )
                self._pem = proven
            return self._pem

        return self._hsm.run(run)

    def impostors(self) -> set[int]:
        """Handles of the public keys under the audit key's id that its private key does not
        prove (every one of them when there is no private key)."""

        def run() -> set[int]:
            check = self._challenge()
            return {
                int(obj.handle)
                for obj in self._publics()
                if check is None or not _proves(_pem_of(obj), *check)
            }

        return self._hsm.run(run)

    def sign_audit(self, message: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(message), DER; hashed here (SoftHSM lacks ECDSA_SHA256)."""
        return self._hsm.run(self._sign, message)

    def _sign(self, message: bytes) -> bytes:
        private = self._hsm.objects.get(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY)
        raw = bytes(private.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )

    def _challenge(self) -> tuple[bytes, bytes] | None:
        """(message, signature) fresh from the private key, or None when there is none."""
        if self._hsm.objects.lookup(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY) is None:
            return None
        message = bytes(self._hsm.require_session().generate_random(256))
        return message, self._sign(message)

    def _proven(self, known: Sequence[str]) -> str | None:
        check = self._challenge()
        if check is None:
            return None
        candidates = [_pem_of(obj) for obj in self._publics()] + list(known)
        return next((pem for pem in candidates if _proves(pem, *check)), None)

    def _publics(self) -> list[Any]:
        return list(
            self._hsm.require_session().get_objects(
                {Attribute.ID: AUDIT_KEY_ID, Attribute.CLASS: ObjectClass.PUBLIC_KEY}
            )
        )

    def read_head(self, registry: str) -> bytes | None:
        """The newest audit head kept on the token (several exist only after a crash mid-update,
        or beside one written by an older kmtui)."""

        def run() -> bytes | None:
            if not self._hsm.profile.private_data:
                values = [_head_value(obj) for obj in self._label_keys(_head_id(registry))]
            else:
                values = [_head_value(obj) for obj in self._head_objects(registry)]
            found = [v for v in values if v is not None]
            return max(found, key=_head_seq) if found else None

        return self._hsm.run(run)

    def write_head(self, registry: str, value: bytes) -> None:
        """Move the head: its value is the label of one modifiable private data object, so a move
        is one C_SetAttributeValue (about a hundredth of creating an object on SoftHSM2).

        The object is remembered, so a session searches the token only once; the first move in
        a session also retires heads an older kmtui kept as one object per value.
        """
        label = f"{HEAD_LABEL}:{value.decode('ascii')}"

        def run() -> None:
            cached = self._heads.get(registry)
            if cached is not None:
                with suppress(*GONE):  # else another process removed it: search again
                    cached[Attribute.LABEL] = label
                    return
            if self._hsm.profile.private_data:
                found = list(self._head_objects(registry))
                moving = [o for o in found if _moves(o, registry)]
            else:
                found = moving = list(self._label_keys(_head_id(registry)))
            head = moving[0] if moving else self._new_head(registry, label)
            head[Attribute.LABEL] = label
            self._heads[registry] = head
            for obj in found:
                if obj is not head:
                    with suppress(*GONE):
                        obj.destroy()

        self._hsm.run(run)

    def _new_head(self, registry: str, label: str) -> Any:
        if not self._hsm.profile.private_data:
            return self._label_key(_head_id(registry), label, modifiable=True)
        return self._hsm.require_session().create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: True,
                Attribute.LABEL: label,
                Attribute.APPLICATION: _head_application(registry),
                Attribute.VALUE: b"kmtui audit head: the value is the label",
            }
        )

    def pinned(self) -> list[str]:
        """The registry ids this token is pinned to (one, unless someone planted more)."""

        def run() -> list[str]:
            if not self._hsm.profile.private_data:
                prefix = PIN_LABEL + ":"
                labels = [str(o[Attribute.LABEL]) for o in self._label_keys(PIN_KEY_ID)]
                return sorted({x[len(prefix) :] for x in labels if x.startswith(prefix)})
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
            if not self._hsm.profile.private_data:
                self._label_key(PIN_KEY_ID, f"{PIN_LABEL}:{registry}", modifiable=False)
                return
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

    def _label_keys(self, cka_id: bytes) -> list[Any]:
        """The private key objects under `cka_id` whose labels hold a value (no data objects)."""
        query = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            Attribute.ID: cka_id,
            Attribute.PRIVATE: True,
        }
        return list(self._hsm.require_session().get_objects(query))

    def _label_key(self, cka_id: bytes, label: str, *, modifiable: bool) -> Any:
        return self._hsm.keygen.label_holder(templates.label_holder(cka_id, label, modifiable))

    def _head_objects(self, registry: str) -> Iterator[Any]:
        """This registry's heads: private ones only, which no one makes without the PIN (any
        token user can create a public object under the same label): those an older kmtui made
        (the value in CKA_VALUE, the label fixed) and the one moved by its label."""
        session = self._hsm.require_session()
        private = {Attribute.CLASS: ObjectClass.DATA, Attribute.PRIVATE: True}
        yield from session.get_objects({**private, Attribute.LABEL: f"{HEAD_LABEL}:{registry}"})
        yield from session.get_objects(
            {**private, Attribute.APPLICATION: _head_application(registry)}
        )


def _head_id(registry: str) -> bytes:
    return HEAD_KEY_PREFIX + registry.encode("ascii", "replace")


def _head_application(registry: str) -> str:
    """CKA_APPLICATION of the head that moves by its label: fixed at creation, so it finds it."""
    return f"{HEAD_LABEL}:{registry}"


def _moves(obj: Any, registry: str) -> bool:
    try:
        return bool(obj[Attribute.APPLICATION] == _head_application(registry))
    except (p11.PKCS11Error, UnicodeDecodeError):
        return False


def _head_value(obj: Any) -> bytes | None:
    """A head's value: its label after the prefix (the moving head), else its CKA_VALUE."""
    try:
        label = str(obj[Attribute.LABEL])
        if label.startswith(HEAD_LABEL + ":{"):
            return label[len(HEAD_LABEL) + 1 :].encode("ascii", "replace")
        return bytes(obj[Attribute.VALUE])
    except (p11.PKCS11Error, UnicodeDecodeError):
        return None


def _pem_of(public: Any) -> str:
    """A public key object as PEM; '' for one that is not an EC key kmtui can read."""
    try:
        attrs = {
            Attribute(a): v
            for a, v in public.get_attributes(PUBLIC_VALUE_ATTRS[KeyType.EC]).items()
        }
        pem: bytes = public_key(KeyType.EC, attrs).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (p11.PKCS11Error, errors.HsmError, KeyError, ValueError, TypeError):
        return ""
    return pem.decode("ascii")


def _proves(pem: str, message: bytes, signature: bytes) -> bool:
    """Whether `pem` verifies the private key's signature; any failure is a failed check."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _head_seq(value: bytes) -> int:
    try:
        return int(json.loads(value)["seq"])
    except (ValueError, KeyError, TypeError):
        return -1
