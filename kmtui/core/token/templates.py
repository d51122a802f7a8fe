"""The ONLY place PKCS#11 key templates are built: one builder per purpose, every boolean explicit.

Nothing here relies on python-pkcs11's or the token's defaults, which differ between tokens and
have let a sensitive key be recovered in the clear (wrap with the public key, decrypt with the
private one). The invariants of DESIGN.md section 4 are checked by `violations()`, used both before
a template is sent and on the attributes read back from the token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from kmtui.core.errors import UsageError


class Purpose(StrEnum):
    ENCRYPT = "encrypt"
    WRAP = "wrap"
    SIGN = "sign"
    MAC = "mac"


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    key_type: KeyType
    bits: int
    purposes: tuple[Purpose, ...]
    curve_oid: str = ""

    @property
    def symmetric(self) -> bool:
        return self.key_type in (KeyType.AES, KeyType.GENERIC_SECRET)

    @property
    def default_purpose(self) -> Purpose:
        return self.purposes[0]


_AES = (Purpose.ENCRYPT, Purpose.WRAP)
ALGORITHMS: dict[str, AlgorithmSpec] = {
    spec.name: spec
    for spec in (
        AlgorithmSpec("AES-128", KeyType.AES, 128, _AES),
        AlgorithmSpec("AES-192", KeyType.AES, 192, _AES),
        AlgorithmSpec("AES-256", KeyType.AES, 256, _AES),
        AlgorithmSpec("HMAC-SHA256", KeyType.GENERIC_SECRET, 256, (Purpose.MAC,)),
        AlgorithmSpec("RSA-2048", KeyType.RSA, 2048, (Purpose.SIGN,)),
        AlgorithmSpec("RSA-3072", KeyType.RSA, 3072, (Purpose.SIGN,)),
        AlgorithmSpec("RSA-4096", KeyType.RSA, 4096, (Purpose.SIGN,)),
        AlgorithmSpec("EC-P256", KeyType.EC, 256, (Purpose.SIGN,), "secp256r1"),
        AlgorithmSpec("EC-P384", KeyType.EC, 384, (Purpose.SIGN,), "secp384r1"),
    )
}

GENERATE_MECHANISM: dict[KeyType, Mechanism] = {
    KeyType.AES: Mechanism.AES_KEY_GEN,
    KeyType.GENERIC_SECRET: Mechanism.GENERIC_SECRET_KEY_GEN,
    KeyType.RSA: Mechanism.RSA_PKCS_KEY_PAIR_GEN,
    KeyType.EC: Mechanism.EC_KEY_PAIR_GEN,
}

# Every usage boolean, set explicitly on each key template.
USAGE = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)
# Usage attributes that exist on each object class (PKCS#11 v2.40 sections 4.8-4.10).
_CLASS_USAGE: dict[ObjectClass, tuple[Attribute, ...]] = {
    ObjectClass.SECRET_KEY: USAGE,
    ObjectClass.PUBLIC_KEY: (Attribute.ENCRYPT, Attribute.WRAP, Attribute.VERIFY, Attribute.DERIVE),
    ObjectClass.PRIVATE_KEY: (
        Attribute.DECRYPT,
        Attribute.UNWRAP,
        Attribute.SIGN,
        Attribute.DERIVE,
    ),
}
_USAGE_FOR_PURPOSE: dict[Purpose, frozenset[Attribute]] = {
    Purpose.ENCRYPT: frozenset({Attribute.ENCRYPT, Attribute.DECRYPT}),
    Purpose.WRAP: frozenset({Attribute.WRAP, Attribute.UNWRAP}),
    Purpose.SIGN: frozenset({Attribute.SIGN, Attribute.VERIFY}),
    Purpose.MAC: frozenset({Attribute.SIGN, Attribute.VERIFY}),
}
MAX_LABEL_BYTES = 128
SYSTEM_PREFIX = b"kmtui:sys-"
"""CKA_IDs of kmtui's own objects (its sealing, registry and audit keys), never a user's key."""
KEK_UNWRAP: dict[Attribute, bool] = {
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.PRIVATE: True,
}
"""The CKA_UNWRAP_TEMPLATE of every key-encryption key: a key it unwraps is sensitive, never
extractable and private. Without it, anyone who can use the KEK could wrap a key under it and
unwrap it back with SENSITIVE=false to read its value; PRIVATE also shuts out public sessions,
which need no PIN and can use a trusted (so public) KEK. Never read back (see arrays.py): a
KEK is proved by refusing a clear unwrap (`clear_unwrap`)."""


@dataclass(frozen=True)
class KeyTemplate:
    """What one key generation sends to the token, and what it must read back."""

    algorithm: AlgorithmSpec
    purpose: Purpose
    exportable: bool
    mechanism: Mechanism
    cka_id: bytes
    label: str
    secret: dict[Attribute, Any] = field(default_factory=dict)
    public: dict[Attribute, Any] = field(default_factory=dict)
    private: dict[Attribute, Any] = field(default_factory=dict)

    def expected(self, object_class: ObjectClass, *, local: bool = True) -> dict[Attribute, Any]:
        """The attributes the created object must carry and that can be read back, including
        the token-derived ones (an unwrap template is proved by its effect instead; CKA_LOCAL
        only where the token reports it: `local`)."""
        if object_class == ObjectClass.PUBLIC_KEY:
            return dict(self.public)
        base = self.secret if object_class == ObjectClass.SECRET_KEY else self.private
        expected: dict[Attribute, Any] = {
            a: v for a, v in base.items() if a != Attribute.UNWRAP_TEMPLATE
        }
        if local:
            expected[Attribute.LOCAL] = True
        expected[Attribute.ALWAYS_SENSITIVE] = True
        expected[Attribute.NEVER_EXTRACTABLE] = not self.exportable
        return expected


def without(template: KeyTemplate, omit: frozenset[Attribute]) -> KeyTemplate:
    """`template` as sent to a token that rejects the attributes in `omit` (its profile's
    `rejected`: v2.40 additions, or CKA_TRUSTED where there is no SO). Only attributes whose
    absence leaves the section 4 invariants intact may be omitted; callers refuse the rest."""
    if not omit:
        return template
    return replace(
        template,
        secret={a: v for a, v in template.secret.items() if a not in omit},
        public={a: v for a, v in template.public.items() if a not in omit},
        private={a: v for a, v in template.private.items() if a not in omit},
    )


def algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name.upper()]
    except KeyError:
        raise UsageError(
            f"Unknown algorithm {name!r}.", f"Choose one of: {', '.join(ALGORITHMS)}."
        ) from None


def _usage(cls: ObjectClass, purpose: Purpose) -> dict[Attribute, bool]:
    wanted = _USAGE_FOR_PURPOSE[purpose]
    return {attr: attr in wanted for attr in _CLASS_USAGE[cls]}


def _protection(exportable: bool) -> dict[Attribute, bool]:
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: exportable,
        Attribute.WRAP_WITH_TRUSTED: exportable,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
    }


def _check_label(label: str) -> None:
    if not label.strip():
        raise UsageError("A key needs a label.", "Give --label a short descriptive name.")
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        raise UsageError(f"The label is longer than {MAX_LABEL_BYTES} bytes.", "Shorten it.")


def build(
    algorithm_name: str,
    purpose: Purpose | str | None,
    *,
    cka_id: bytes,
    label: str,
    exportable: bool = False,
    trusted: bool = False,
) -> KeyTemplate:
    """One template per (algorithm, purpose); refuses combinations kmtui does not support.

    `trusted` makes a key-encryption key the security officer creates (CKA_TRUSTED can only be
    set by the SO, who sees public objects only): the one kind of key that may wrap exportable
    keys, which are all WRAP_WITH_TRUSTED.
    """
    spec = algorithm(algorithm_name)
    try:
        chosen = Purpose(purpose) if purpose else spec.default_purpose
    except ValueError:
        raise UsageError(
            f"Unknown purpose {purpose!r}.",
            f"Choose one of: {', '.join(p.value for p in Purpose)}.",
        ) from None
    if chosen not in spec.purposes:
        allowed = ", ".join(p.value for p in spec.purposes)
        raise UsageError(f"{spec.name} keys cannot be used to {chosen.value}.", f"Use: {allowed}.")
    _check_label(label)
    common = {Attribute.ID: cka_id, Attribute.LABEL: label, Attribute.KEY_TYPE: spec.key_type}
    mechanism = GENERATE_MECHANISM[spec.key_type]

    if trusted and (chosen != Purpose.WRAP or not spec.symmetric or exportable):
        raise UsageError("Only a non-exportable AES key-encryption key can be made trusted.")
    if spec.symmetric:
        secret = {
            Attribute.CLASS: ObjectClass.SECRET_KEY,
            **common,
            **_protection(exportable),
            **_usage(ObjectClass.SECRET_KEY, chosen),
            Attribute.PRIVATE: not trusted,
            Attribute.TRUSTED: trusted,
            Attribute.VALUE_LEN: spec.bits // 8,
        }
        if chosen == Purpose.WRAP:
            secret[Attribute.UNWRAP_TEMPLATE] = dict(KEK_UNWRAP)
        template = KeyTemplate(spec, chosen, exportable, mechanism, cka_id, label, secret=secret)
    else:
        public: dict[Attribute, Any] = {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY,
            **common,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.MODIFIABLE: False,
            Attribute.COPYABLE: False,
            Attribute.DESTROYABLE: True,
            Attribute.TRUSTED: False,
            **_usage(ObjectClass.PUBLIC_KEY, chosen),
        }
        if spec.key_type == KeyType.RSA:
            public[Attribute.MODULUS_BITS] = spec.bits
            public[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
        else:
            public[Attribute.EC_PARAMS] = encode_named_curve_parameters(spec.curve_oid)
        private = {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY,
            **common,
            **_protection(exportable),
            **_usage(ObjectClass.PRIVATE_KEY, chosen),
        }
        template = KeyTemplate(
            spec, chosen, exportable, mechanism, cka_id, label, public=public, private=private
        )
    for cls, attrs in (
        (ObjectClass.SECRET_KEY, template.secret),
        (ObjectClass.PUBLIC_KEY, template.public),
        (ObjectClass.PRIVATE_KEY, template.private),
    ):
        if attrs and (problems := violations(cls, attrs)):
            raise AssertionError(f"template for {spec.name}/{chosen} breaks: {problems}")
    return template


def from_params(params: Mapping[str, Any]) -> KeyTemplate:
    """The template an operation's parameters describe (what its approvers saw)."""
    return build(
        str(params["algorithm"]),
        str(params["purpose"]),
        cka_id=bytes.fromhex(str(params["cka_id"])),
        label=str(params["label"]),
        exportable=bool(params.get("exportable")),
        trusted=bool(params.get("trusted")),
    )


MIN_RECIPIENT_BITS = 2048
RECIPIENT_BITS = (2048, 3072, 4096)
"""RSA sizes kmtui registers as recipients' public keys (each has an RSA-<bits> entry above)."""


def recipient_flags(trusted: bool) -> dict[Attribute, Any]:
    """What a recipient's RSA public key object must carry besides its value: it wraps and does
    nothing else, cannot be changed, and is trusted only when the security officer made it so."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.TRUSTED: trusted,
        Attribute.ENCRYPT: False,
        Attribute.WRAP: True,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
    }


def recipient(
    modulus: int, exponent: int, *, cka_id: bytes, label: str, trusted: bool = False
) -> KeyTemplate:
    """A recipient's RSA public key (imported from PEM) as a token PUBLIC_KEY object that may only
    wrap. `trusted` objects are created by the security officer (CKA_TRUSTED is SO-only): the
    only recipients that can wrap exportable keys, which are all WRAP_WITH_TRUSTED."""
    bits = modulus.bit_length()
    if bits < MIN_RECIPIENT_BITS:
        raise UsageError(
            f"The recipient's RSA key has {bits} bits; kmtui needs at least "
            f"{MIN_RECIPIENT_BITS} (a recipient key that short is too weak to protect a key).",
            "Ask the recipient for an RSA key of 2048, 3072 or 4096 bits.",
        )
    if bits not in RECIPIENT_BITS:
        raise UsageError(
            f"The recipient's RSA key has {bits} bits; kmtui registers RSA keys of "
            f"{', '.join(map(str, RECIPIENT_BITS))} bits.",
            "Ask the recipient for a key of one of those sizes.",
        )
    if exponent < 3 or exponent % 2 == 0:
        raise UsageError("The recipient's RSA public exponent is not valid.", "Check the PEM.")
    _check_label(label)
    spec = ALGORITHMS[f"RSA-{bits}"]
    public: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: KeyType.RSA,
        Attribute.ID: cka_id,
        Attribute.LABEL: label,
        **recipient_flags(trusted),
        Attribute.MODULUS: modulus.to_bytes((bits + 7) // 8, "big"),
        Attribute.PUBLIC_EXPONENT: exponent.to_bytes((exponent.bit_length() + 7) // 8, "big"),
    }
    if problems := violations(ObjectClass.PUBLIC_KEY, public):
        raise AssertionError(f"recipient template breaks: {problems}")
    return KeyTemplate(
        spec, Purpose.WRAP, False, GENERATE_MECHANISM[KeyType.RSA], cka_id, label, public=public
    )


def label_holder(cka_id: bytes, label: str, modifiable: bool) -> dict[Attribute, Any]:
    """A private generic secret that can do nothing: only its label (a value) matters. Holds the
    audit head and the registry pin on tokens that keep no private data objects."""
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
        Attribute.ID: cka_id,
        Attribute.LABEL: label,
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.MODIFIABLE: modifiable,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        **dict.fromkeys(USAGE, False),
    }


def unwrap_target(template: KeyTemplate) -> dict[Attribute, Any]:
    """What an imported (unwrapped) key becomes: the generation template less what the blob
    fixes (CKA_VALUE_LEN) and what SoftHSM 2.6 refuses on unwrap (CKA_MODIFIABLE)."""
    target = dict(template.secret)
    del target[Attribute.VALUE_LEN], target[Attribute.MODIFIABLE]
    return target


def kcv_probe(template: KeyTemplate) -> dict[Attribute, Any]:
    """A session twin of an imported key that may encrypt, only to compute its KCV."""
    probe = unwrap_target(template)
    probe.pop(Attribute.UNWRAP_TEMPLATE, None)
    probe.update(
        {
            Attribute.TOKEN: False,
            Attribute.EXTRACTABLE: False,
            Attribute.WRAP_WITH_TRUSTED: False,
            Attribute.ID: b"kmtui-kcv-probe",
            Attribute.LABEL: "kmtui KCV probe",
            **_usage(ObjectClass.SECRET_KEY, Purpose.ENCRYPT),
        }
    )
    return probe


def with_value(template: KeyTemplate, value: bytes) -> dict[Attribute, Any]:
    """A key entered from components: C_CreateObject with its value (SoftHSM refuses
    CKA_MODIFIABLE and CKA_VALUE_LEN there, as on unwrap)."""
    created = unwrap_target(template)
    created[Attribute.VALUE] = value
    return created


def session_probe() -> dict[Attribute, Any]:
    """A throw-away session AES key a key-encryption key wraps and unwraps in its self-check."""
    return {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE_LEN: 16,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: True,
        Attribute.WRAP_WITH_TRUSTED: False,
        Attribute.MODIFIABLE: False,
        Attribute.COPYABLE: False,
        Attribute.DESTROYABLE: True,
        Attribute.TRUSTED: False,
        Attribute.LABEL: "kmtui self-check probe",
        **_usage(ObjectClass.SECRET_KEY, Purpose.ENCRYPT),
    }


def unwrapped_probe() -> dict[Attribute, Any]:
    """Where the self-check unwraps its probe: a session key that cannot leave the token."""
    template = {**session_probe(), Attribute.EXTRACTABLE: False}
    # The blob fixes the length; SoftHSM 2.6 refuses CKA_MODIFIABLE in an unwrap template
    # (AttributeReadOnly, even as false). The probe lives only for the check, so neither matters.
    del template[Attribute.VALUE_LEN], template[Attribute.MODIFIABLE]
    return template


def clear_unwrap() -> dict[Attribute, Any]:
    """The attacker's template, asked of a key-encryption key in its self-check: the probe back
    as a readable key. A KEK that obeys would hand any key it wraps back in the clear."""
    return {
        **unwrapped_probe(),
        Attribute.SENSITIVE: False,
        Attribute.EXTRACTABLE: True,
        Attribute.LABEL: "kmtui clear-unwrap probe",
    }


def violations(cls: ObjectClass, attrs: Mapping[Attribute, Any]) -> list[str]:
    """The DESIGN.md section 4 invariants that these attributes break (empty when none)."""
    problems: list[str] = []
    for attr in _CLASS_USAGE.get(cls, ()):
        if attr not in attrs:
            problems.append(f"{attr.name} not explicit")
    if cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
        if attrs.get(Attribute.SENSITIVE) is not True:
            problems.append("SENSITIVE is not true")
        extractable = attrs.get(Attribute.EXTRACTABLE)
        if extractable is not False and attrs.get(Attribute.WRAP_WITH_TRUSTED) is not True:
            problems.append("EXTRACTABLE without WRAP_WITH_TRUSTED")
    wraps = attrs.get(Attribute.WRAP) or attrs.get(Attribute.UNWRAP)
    crypts = attrs.get(Attribute.ENCRYPT) or attrs.get(Attribute.DECRYPT)
    if wraps and crypts:
        problems.append("both wraps and encrypts")
    if cls == ObjectClass.SECRET_KEY and attrs.get(Attribute.WRAP) and attrs.get(Attribute.UNWRAP):
        forced = attrs.get(Attribute.UNWRAP_TEMPLATE) or {}
        if (
            forced.get(Attribute.SENSITIVE) is not True
            or forced.get(Attribute.EXTRACTABLE) is not False
        ):
            problems.append("wraps, and unwraps keys in the clear (no enforced unwrap template)")
    if (
        cls == ObjectClass.PRIVATE_KEY
        and attrs.get(Attribute.SIGN)
        and attrs.get(Attribute.DECRYPT)
    ):
        problems.append("private key both signs and decrypts")
    return problems


def cka_id(key_id: str, version: int) -> bytes:
    """CKA_ID of one key version: readable, so any token object can be traced to the registry."""
    return f"kmtui:{key_id}:{version}".encode("ascii")


def parse_cka_id(value: bytes) -> tuple[str, int] | None:
    """Inverse of `cka_id`; None for objects kmtui did not create."""
    try:
        prefix, key_id, version = value.decode("ascii").split(":")
        if prefix != "kmtui" or not key_id or not version.isdigit():
            return None
        return key_id, int(version)
    except (UnicodeDecodeError, ValueError):
        return None


def object_class(algorithm: str, tags: Sequence[str]) -> ObjectClass:
    """The token object that is the key: its secret key, its private key, or (for a recipient
    imported by its public key alone) that public key."""
    if ALGORITHMS[algorithm].symmetric:
        return ObjectClass.SECRET_KEY
    return ObjectClass.PUBLIC_KEY if "recipient" in tags else ObjectClass.PRIVATE_KEY
