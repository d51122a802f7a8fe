"""The token's objects by CKA_ID: find, describe, read, check and destroy them.

Object handles are per session: the handle cache lives here and is cleared at log-out. The
methods that take or return raw python-pkcs11 objects are for the token room's parts and must be
called on the PKCS#11 thread (inside `Hsm.run`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_named_curve_parameters

from kmtui.core import errors
from kmtui.core.token import templates
from kmtui.core.token.errors import GONE
from kmtui.core.token.records import ObjectInfo

if TYPE_CHECKING:
    from kmtui.core.token.session import Hsm

T = TypeVar("T")

PUBLIC_VALUE_ATTRS: dict[KeyType, list[Attribute]] = {
    KeyType.RSA: [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT],
    KeyType.EC: [Attribute.EC_PARAMS, Attribute.EC_POINT],
}
"""The attributes that hold a public key's value, by key type."""
_NOUNS = {
    ObjectClass.SECRET_KEY: "secret keys",
    ObjectClass.PRIVATE_KEY: "private keys",
    ObjectClass.PUBLIC_KEY: "public keys",
}
_CURVES: dict[bytes, ec.EllipticCurve] = {
    encode_named_curve_parameters("secp256r1"): ec.SECP256R1(),
    encode_named_curve_parameters("secp384r1"): ec.SECP384R1(),
}


class Objects:
    """Finds and reads token objects for the logged-in session, remembering their handles."""

    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm
        self._handles: dict[tuple[bytes, ObjectClass], Any] = {}

    def forget(self) -> None:
        """Drop every remembered handle: they die with the session that found them."""
        self._handles.clear()

    # -- for every layer (each call runs on the PKCS#11 thread) -------------------------------

    def find(self, cka_id: bytes, object_class: ObjectClass | None = None) -> ObjectInfo | None:
        return self._hsm.run(lambda: self._describe_opt(self.lookup(cka_id, object_class)))

    def scan(self) -> list[ObjectInfo]:
        """Every object the user can see, read defensively (foreign objects never stop the scan)."""
        return self._hsm.run(self._scan)

    def attributes(self, cka_id: bytes, object_class: ObjectClass) -> dict[str, Any]:
        """The readable attributes of one object, for display (sensitive values never readable)."""
        wanted = [
            Attribute.LABEL,
            Attribute.ID,
            Attribute.KEY_TYPE,
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.WRAP_WITH_TRUSTED,
            Attribute.MODIFIABLE,
            Attribute.COPYABLE,
            Attribute.DESTROYABLE,
            Attribute.LOCAL,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.TRUSTED,
            *templates.USAGE,
        ]

        def read(obj: Any) -> dict[str, Any]:
            # One C_GetAttributeValue call; python-pkcs11 leaves out what the token will not
            # give (absent or sensitive). One call per attribute only if that call fails.
            try:
                values = {Attribute(a): v for a, v in obj.get_attributes(wanted).items()}
            except (p11.PKCS11Error, UnicodeDecodeError):
                values = {}
                for attr in wanted:
                    try:
                        values[attr] = obj[attr]
                    except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
                        continue
            out: dict[str, Any] = {}
            for attr in wanted:
                if attr not in values:
                    continue
                value = values[attr]
                if isinstance(value, str):
                    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                out[attr.name] = value
            return out

        return self._hsm.run(lambda: self._with_key(cka_id, object_class, read))

    def kcv(self, cka_id: bytes) -> str:
        """Key check value of a symmetric key, as 6 hex digits."""
        return self._hsm.run(lambda: self._with_key(cka_id, ObjectClass.SECRET_KEY, self.kcv_of))

    def fingerprint(self, cka_id: bytes) -> str:
        """SHA-256 of the public key's DER SubjectPublicKeyInfo."""

        def read(public: Any) -> str:
            key_type = public[Attribute.KEY_TYPE]
            return spki_fingerprint(key_type, self.public_attributes(public, key_type))

        return self._hsm.run(lambda: self._with_key(cka_id, ObjectClass.PUBLIC_KEY, read))

    def destroy(self, cka_id: bytes) -> int:
        """Destroy every object carrying this CKA_ID; returns how many went."""

        def run() -> int:
            count = 0
            for obj in list(self._hsm.require_session().get_objects({Attribute.ID: cka_id})):
                obj.destroy()
                count += 1
            for cls in ObjectClass:
                self._handles.pop((cka_id, cls), None)
            return count

        return self._hsm.run(run)

    # -- for the token room, on the PKCS#11 thread ----------------------------------------------

    def lookup(self, cka_id: bytes, object_class: ObjectClass | None = None) -> Any:
        """The object kmtui believes for this CKA_ID (and class) on the token, or None.

        Any token user can create public objects under any CKA_ID without the PIN, so a private
        key is searched among private objects (a logged-in user made them), a secret key among
        private and trusted ones (the security officer's KEK, public by necessity), a public key
        among trusted ones, else among all. Two candidates are a refusal, never a silent first
        pick. Without a class, the object that holds the secret comes first (a key pair shares
        one CKA_ID).
        """
        if object_class is None:
            for cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                if (obj := self.lookup(cka_id, cls)) is not None:
                    return obj
            return None
        session = self._hsm.require_session()

        def search(only: dict[Attribute, bool]) -> list[Any]:
            query = {Attribute.ID: cka_id, Attribute.CLASS: object_class, **only}
            return list(session.get_objects(query))

        if object_class == ObjectClass.PUBLIC_KEY:
            found = search({Attribute.TRUSTED: True}) or search({})
        elif object_class == ObjectClass.SECRET_KEY:
            found = search({Attribute.PRIVATE: True}) + search(
                {Attribute.PRIVATE: False, Attribute.TRUSTED: True}
            )
        else:
            found = search({Attribute.PRIVATE: True})
        if len(found) > 1:
            raise errors.DuplicateObject(
                f"{len(found)} {_NOUNS.get(object_class, 'objects')} carry CKA_ID {cka_id!r} on "
                f"token {self._hsm.name}: kmtui will not guess which one is its own, so it uses "
                "neither.",
                "Run `kmtui reconcile` to see them. Someone made the extra one (with the PIN, "
                "unless it is a public key): investigate before removing it.",
            )
        return found[0] if found else None

    def get(self, cka_id: bytes, object_class: ObjectClass) -> Any:
        """The object for (CKA_ID, class), from the handle cache when this session has seen it."""
        cached = self._handles.get((cka_id, object_class))
        if cached is not None:
            return cached
        obj = self.lookup(cka_id, object_class)
        if obj is None:
            raise errors.ObjectGone(
                f"No object with CKA_ID {cka_id!r} on token {self._hsm.name}.",
                "Run `kmtui reconcile` to see what changed.",
            )
        self._handles[(cka_id, object_class)] = obj
        return obj

    def cached(self, cka_id: bytes, object_class: ObjectClass) -> Any:
        """The remembered object for (CKA_ID, class), or None without asking the token."""
        return self._handles.get((cka_id, object_class))

    def remember(self, cka_id: bytes, object_class: ObjectClass, obj: Any) -> None:
        """Keep the handle of an object this session just made."""
        self._handles[(cka_id, object_class)] = obj

    def read_attributes(self, obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        """All attributes in one C_GetAttributeValue call (10x faster than one call each)."""
        return {Attribute(a): v for a, v in obj.get_attributes(attrs).items()}

    def public_attributes(self, public: Any, key_type: KeyType) -> dict[Attribute, Any]:
        """The attributes that hold a public key object's value, in one call."""
        return self.read_attributes(public, PUBLIC_VALUE_ATTRS[key_type])

    def kcv_of(self, key: Any) -> str:
        """The key's CKA_CHECK_VALUE where the token gives one; else the KCV computed on the
        token by the rule for its kind (`computed_kcv`)."""
        attrs = key.get_attributes(
            [
                Attribute.CHECK_VALUE,
                Attribute.KEY_TYPE,
                Attribute.ENCRYPT,
                Attribute.SIGN,
                Attribute.WRAP,
            ]
        )
        value = attrs.get(Attribute.CHECK_VALUE) or b""
        if value:
            return bytes(value[:3]).hex().upper()
        kcv = computed_kcv(self._hsm.require_session(), key, attrs)
        if kcv:
            return kcv
        raise errors.HsmError(
            f"Token {self._hsm.name} gives no check value for this key, and it can neither "
            "encrypt, MAC nor wrap one.",
            "Compare keys by their fingerprint in the registry instead.",
        )

    def _with_key(self, cka_id: bytes, object_class: ObjectClass, fn: Callable[[Any], T]) -> T:
        """Run `fn(obj)`; a stale cached handle (object destroyed elsewhere) is looked up again."""
        try:
            return fn(self.get(cka_id, object_class))
        except GONE:
            if self._handles.pop((cka_id, object_class), None) is None:
                raise
            return fn(self.get(cka_id, object_class))

    def _scan(self) -> list[ObjectInfo]:
        result = []
        for obj in self._iter_objects():
            info = self._describe(obj)
            if info is not None:
                result.append(info)
        return result

    def _iter_objects(self) -> Iterator[Any]:
        it = iter(self._hsm.require_session().get_objects())
        while True:
            try:
                yield next(it)
            except StopIteration:
                return
            except (p11.PKCS11Error, KeyError, ValueError, UnicodeDecodeError):
                continue

    def _describe_opt(self, obj: Any) -> ObjectInfo | None:
        return None if obj is None else self._describe(obj)

    def _describe(self, obj: Any) -> ObjectInfo | None:
        raw = _raw_attributes(
            obj,
            [
                Attribute.CLASS,
                Attribute.ID,
                Attribute.LABEL,
                Attribute.KEY_TYPE,
                Attribute.PRIVATE,
                Attribute.TRUSTED,
            ],
        )
        try:
            label_bytes = raw.get(Attribute.LABEL, b"")
            label, utf8 = label_bytes.decode("utf-8"), True
        except UnicodeDecodeError:
            label, utf8 = label_bytes.decode("utf-8", "replace"), False
        cls_raw = raw.get(Attribute.CLASS)
        kt_raw = raw.get(Attribute.KEY_TYPE)
        return ObjectInfo(
            handle=int(obj.handle or 0),
            object_class=_enum_name(ObjectClass, cls_raw),
            cka_id=raw.get(Attribute.ID, b""),
            label=label,
            label_is_utf8=utf8,
            key_type=_enum_name(KeyType, kt_raw) if kt_raw is not None else "",
            private=raw.get(Attribute.PRIVATE) is True,
            trusted=raw.get(Attribute.TRUSTED) is True,
        )


def computed_kcv(session: Any, key: Any, attrs: dict[Any, Any]) -> str:
    """A KCV computed on the token, first 3 bytes of: AES key that may encrypt, AES-ECB of a
    zero block; HMAC key, HMAC-SHA256 of a zero block; key-encryption key, AES key wrap
    (RFC 3394) of an all-zero AES-128 key. '' for a key that can do none of these."""
    kind = attrs.get(Attribute.KEY_TYPE)
    if kind == KeyType.AES and attrs.get(Attribute.ENCRYPT):
        return aes_kcv(key)
    if kind == KeyType.GENERIC_SECRET and attrs.get(Attribute.SIGN):
        return bytes(key.sign(bytes(16), mechanism=Mechanism.SHA256_HMAC)[:3]).hex().upper()
    if kind == KeyType.AES and attrs.get(Attribute.WRAP):
        zero = session.create_object(
            {
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.AES,
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.VALUE: bytes(16),
                Attribute.LABEL: "kmtui KCV zero key",
            }
        )
        try:
            return bytes(key.wrap_key(zero, mechanism=Mechanism.AES_KEY_WRAP)[:3]).hex().upper()
        finally:
            zero.destroy()
    return ""


def aes_kcv(key: Any) -> str:
    """The standard AES KCV, computed on the token: AES-ECB(key, 16 zero bytes), first 3 bytes."""
    return bytes(key.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)[:3]).hex().upper()


def spki_fingerprint(key_type: KeyType, attrs: dict[Attribute, Any]) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, built from the public key's attributes."""
    der = public_key(key_type, attrs).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def public_key(key_type: KeyType, attrs: dict[Attribute, Any]) -> Any:
    """A `cryptography` public key from the token object's attributes."""
    if key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(attrs[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(attrs[Attribute.MODULUS], "big"),
        )
        public: Any = numbers.public_key()
    elif key_type == KeyType.EC:
        curve = _CURVES.get(bytes(attrs[Attribute.EC_PARAMS]))
        if curve is None:
            raise errors.HsmError("The token returned an EC key on a curve kmtui does not know.")
        point = bytes(attrs[Attribute.EC_POINT])
        if len(point) == 3 + 2 * ((curve.key_size + 7) // 8):
            point = point[2:]  # DER OCTET STRING around the point (PKCS#11 v2.40 convention)
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    else:
        raise errors.HsmError(f"No public key form for key type {key_type!r}.")
    return public


def _enum_name(enum: Any, raw: Any) -> str:
    if raw is None:
        return ""
    try:
        return str(enum(raw).name)
    except ValueError:
        return hex(int(raw))


def _raw_attributes(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
    """Read attributes in one call, or one by one when that fails, tolerating any that are
    absent or undecodable (a label that is not UTF-8 fails the single call)."""
    try:
        values = {Attribute(a): v for a, v in obj.get_attributes(attrs).items()}
    except (p11.PKCS11Error, UnicodeDecodeError, KeyError, ValueError, NotImplementedError):
        values = None
    if values is not None:
        label = values.get(Attribute.LABEL)
        if isinstance(label, str):
            values[Attribute.LABEL] = label.encode("utf-8", "surrogateescape")
        return values
    out: dict[Attribute, Any] = {}
    for attr in attrs:
        try:
            value = obj[attr]
        except (p11.PKCS11Error, UnicodeDecodeError, KeyError, ValueError, NotImplementedError):
            continue
        if attr == Attribute.LABEL and isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        out[attr] = value
    return out
