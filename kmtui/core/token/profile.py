"""What this token can do, probed once per token and process, never assumed.

Tokens differ in what kmtui depends on: which template attributes they accept, whether they
report CKA_LOCAL and CKA_CHECK_VALUE, whether AES-GCM works through python-pkcs11, whether they
keep private data objects, and, worst, whether they refuse to wrap a key marked non-extractable.
`probe` tries each once with throw-away objects (token objects where tokens treat them
differently from session ones, destroyed at once; a crash can leave one labelled
`PROBE_LABEL`), and the `TokenProfile` it returns says, for each capability, whether kmtui uses
it, replaces it by a declared alternative, or refuses what needs it by name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import MGF

from kmtui.core.token import templates

PROBE_LABEL = "kmtui profile probe"
PROBE_ID = b"kmtui:sys-probe:0"
OPTIONAL_ATTRIBUTES = (
    Attribute.COPYABLE,
    Attribute.DESTROYABLE,
    Attribute.TRUSTED,
    Attribute.WRAP_WITH_TRUSTED,
)
"""Template attributes a token may reject (v2.40 additions, CKA_TRUSTED on tokens without an
SO): left out of every template where the token rejects them, and reported."""

SEAL_GCM = "AES-GCM"
SEAL_CBC_HMAC = "AES-CBC-PAD + HMAC-SHA256"
HEAD_DATA = "private data object"
HEAD_LABEL = "label of a private key object"


@dataclass(frozen=True)
class TokenProfile:
    """The probe's findings; the defaults are what SoftHSM2 does (all capabilities present)."""

    rejected: tuple[str, ...] = ()
    """Attribute names the token refuses in a key template: left out, and reported."""
    reports_local: bool = True
    """CKA_LOCAL reads back true on a key the token generated."""
    check_value: bool = True
    """CKA_CHECK_VALUE is readable; else KCVs are computed on the token."""
    modulus_bits: bool = True
    """CKA_MODULUS_BITS is readable on an RSA key; else its size is read from the modulus."""
    gcm: bool = True
    cbc_pad_hmac: bool = True
    wrap_pad: bool = True
    """AES_KEY_WRAP_PAD (RFC 5649) wraps and unwraps."""
    guards_non_extractable: bool = True
    """The token refused to wrap a key marked non-extractable (it must)."""
    guards_wrap_with_trusted: bool = True
    """The token refused to wrap a WRAP_WITH_TRUSTED key under an untrusted key (it must)."""
    unwrap_template: bool = True
    """A key-encryption key's CKA_UNWRAP_TEMPLATE is enforced: it refused to unwrap a key in
    the clear. Without it, kmtui makes no key-encryption keys (they would hand keys back)."""
    private_data: bool = True
    """The token keeps private CKO_DATA objects (kmtui's audit head and registry pin)."""
    ec: bool = True
    rsa: bool = True
    rsa_sign: str = Mechanism.SHA256_RSA_PKCS.name
    """The mechanism RSA self-checks sign with ('' when none works)."""
    ec_sign: str = Mechanism.ECDSA.name
    problems: tuple[str, ...] = field(default=())
    """Probe steps that failed for a reason other than a missing capability."""

    # -- what kmtui does about each -------------------------------------------------------------

    @property
    def sealing(self) -> str:
        """How operator seeds are sealed ('' when this token can seal them by no known means)."""
        return SEAL_GCM if self.gcm else SEAL_CBC_HMAC if self.cbc_pad_hmac else ""

    @property
    def audit_key(self) -> str:
        """The algorithm of the key that signs audit checkpoints ('' when none can be made)."""
        return "EC-P256" if self.ec else "RSA-3072" if self.rsa else ""

    @property
    def head_store(self) -> str:
        return HEAD_DATA if self.private_data else HEAD_LABEL

    @property
    def exportable_keys(self) -> bool:
        """Whether kmtui may make exportable keys: only where WRAP_WITH_TRUSTED is honoured."""
        return (
            Attribute.WRAP_WITH_TRUSTED.name not in self.rejected and self.guards_wrap_with_trusted
        )

    def omit(self) -> frozenset[Attribute]:
        return frozenset(Attribute[name] for name in self.rejected)

    def fit(self, attrs: dict[Attribute, Any]) -> dict[Attribute, Any]:
        """A template of kmtui's without the attributes this token rejects."""
        omit = self.omit()
        return {a: v for a, v in attrs.items() if a not in omit}

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rejected": list(self.rejected),
            "problems": list(self.problems),
            "sealing": self.sealing,
            "audit_key": self.audit_key,
            "head_store": self.head_store,
            "exportable_keys": self.exportable_keys,
        }

    def rows(self) -> list[tuple[str, str, str]]:
        """(capability, verdict, what kmtui does) for the Token pane and `token info`; the
        verdict is 'used', 'replaced' or 'refused'."""
        rows = []

        def row(name: str, ok: bool, used: str, replaced: str, refused: bool = False) -> None:
            verdict = "used" if ok else "refused" if refused else "replaced"
            rows.append((name, verdict, used if ok else replaced))

        rejected = ", ".join(self.rejected)
        row(
            "template attributes",
            not self.rejected,
            "all of kmtui's attributes accepted",
            f"left out of every template: {rejected}",
        )
        row("CKA_LOCAL", self.reports_local, "read back", "not reported: not checked")
        row(
            "CKA_CHECK_VALUE",
            self.check_value,
            "KCVs read from the token",
            "KCVs computed on the token (AES: encrypt a zero block; HMAC: MAC a zero block; "
            "KEK: wrap a zero key)",
        )
        row(
            "CKA_MODULUS_BITS",
            self.modulus_bits,
            "read back",
            "RSA size read from the modulus",
        )
        row(
            "seed sealing",
            self.gcm,
            SEAL_GCM,
            SEAL_CBC_HMAC if self.cbc_pad_hmac else "no AES-GCM and no AES-CBC-PAD+HMAC",
            refused=not self.cbc_pad_hmac,
        )
        row("AES key wrap (RFC 5649)", self.wrap_pad, "used", "no wrap/export", refused=True)
        row(
            "non-extractable keys",
            self.guards_non_extractable,
            "the token refuses to wrap them",
            "THE TOKEN WRAPS THEM: kmtui makes none unless config.toml acknowledges it",
            refused=True,
        )
        row(
            "WRAP_WITH_TRUSTED",
            self.exportable_keys,
            "honoured: exportable keys wrap only under trusted keys",
            "not honoured: no exportable keys",
            refused=True,
        )
        row(
            "unwrap templates",
            self.unwrap_template,
            "enforced: a key-encryption key unwraps keys only sensitive",
            "IGNORED: kmtui makes no key-encryption keys here (no export/import under a KEK)",
            refused=True,
        )
        row("private data objects", self.private_data, HEAD_DATA, f"audit head in the {HEAD_LABEL}")
        row(
            "EC P-256",
            self.ec,
            "audit key EC-P256",
            "audit key RSA-3072 (PSS)",
            refused=not self.rsa,
        )
        row("RSA", self.rsa, "used", "no RSA keys", refused=True)
        return rows


@contextmanager
def _thrown_away(objects: list[Any]) -> Iterator[list[Any]]:
    try:
        yield objects
    finally:
        for obj in objects:
            with suppress(p11.PKCS11Error):
                obj.destroy()


def _tries(fn: Callable[[], object]) -> bool:
    try:
        return bool(fn())
    except (p11.PKCS11Error, TypeError, ValueError):
        return False


def _aes(session: Any, made: list[Any], **overrides: Any) -> Any:
    """A throw-away AES-128 session key with every usage attribute explicit."""
    template = {
        Attribute.CLASS: ObjectClass.SECRET_KEY,
        Attribute.KEY_TYPE: KeyType.AES,
        Attribute.TOKEN: False,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False,
        Attribute.WRAP: False,
        Attribute.UNWRAP: False,
        Attribute.SIGN: False,
        Attribute.VERIFY: False,
        Attribute.DERIVE: False,
        Attribute.LABEL: PROBE_LABEL,
        **{Attribute[name]: value for name, value in overrides.items()},
    }
    key = session.generate_key(KeyType.AES, 128, capabilities=0, template=template)
    made.append(key)
    return key


def probe(session: Any, mechanisms: frozenset[Mechanism]) -> TokenProfile:
    """Try, once, each thing kmtui depends on; the logged-in `session` is left as it was, and a
    step the token fails for another reason is recorded in `problems` (its capability absent)."""
    found: dict[str, Any] = {}
    problems: list[str] = []

    def step(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except p11.PKCS11Error as exc:
            problems.append(f"{name}: {type(exc).__name__}")

    for leftover in list(session.get_objects({Attribute.ID: PROBE_ID})):  # a crashed probe's
        with suppress(p11.PKCS11Error):
            leftover.destroy()
    with _thrown_away([]) as made:
        step("templates", lambda: _templates(session, made, found, problems))

        def sealing() -> None:
            key = _aes(session, made, ENCRYPT=True, DECRYPT=True)
            found["gcm"] = Mechanism.AES_GCM in mechanisms and _tries(lambda: _gcm(session, key))
            found["cbc_pad_hmac"] = _tries(lambda: _cbc_hmac(session, key, made))

        step("sealing", sealing)
        step("wrapping", lambda: _wrapping(session, made, found))
        found["private_data"] = _tries(lambda: _data_object(session, made))
        step("key pairs", lambda: _pairs(session, made, found, mechanisms))
    absent = {name: False for name in _CAPABILITIES if name not in found}
    return TokenProfile(**{**absent, **found}, problems=tuple(problems))


_CAPABILITIES = (
    "reports_local",
    "check_value",
    "modulus_bits",
    "gcm",
    "cbc_pad_hmac",
    "wrap_pad",
    "guards_non_extractable",
    "guards_wrap_with_trusted",
    "unwrap_template",
    "private_data",
    "ec",
    "rsa",
)


def _templates(session: Any, made: list[Any], found: dict[str, Any], problems: list[str]) -> None:
    """A token key from kmtui's own template (token objects: some tokens treat session objects
    differently); the attributes it refuses, found one at a time; LOCAL and CHECK_VALUE."""
    full = templates.build("AES-256", "encrypt", cka_id=PROBE_ID, label=PROBE_LABEL).secret

    def make(template: dict[Attribute, Any]) -> Any:
        key = session.generate_key(KeyType.AES, 256, capabilities=0, template=template)
        made.append(key)
        return key

    bare = {a: v for a, v in full.items() if a not in OPTIONAL_ATTRIBUTES}
    rejected: list[str] = []
    try:
        key = make(full)
    except p11.PKCS11Error:
        key = None
        for attr in OPTIONAL_ATTRIBUTES:
            if not _tries(partial(make, {**bare, attr: full[attr]})):
                rejected.append(attr.name)
        try:
            key = make(bare)
        except p11.PKCS11Error as exc:
            problems.append(f"no AES key from kmtui's template ({type(exc).__name__})")
    found["rejected"] = tuple(rejected)
    if key is None:
        found["reports_local"] = found["check_value"] = False
        return
    found["reports_local"] = _tries(lambda: key[Attribute.LOCAL] is True)
    found["check_value"] = _tries(lambda: len(bytes(key[Attribute.CHECK_VALUE])) >= 3)


def _gcm(session: Any, key: Any) -> bool:
    nonce = bytes(session.generate_random(96))
    message = bytes(session.generate_random(160))
    sealed = key.encrypt(
        message, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, b"p")
    )
    opened = key.decrypt(
        sealed, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, b"p")
    )
    return bytes(opened) == message


def _cbc_hmac(session: Any, key: Any, made: list[Any]) -> bool:
    iv = bytes(session.generate_random(128))
    message = bytes(session.generate_random(160))
    sealed = key.encrypt(message, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)
    if bytes(key.decrypt(sealed, mechanism=Mechanism.AES_CBC_PAD, mechanism_param=iv)) != message:
        return False
    mac = session.generate_key(
        KeyType.GENERIC_SECRET,
        256,
        capabilities=0,
        mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
        template={
            Attribute.TOKEN: False,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.VERIFY: True,
            Attribute.LABEL: PROBE_LABEL,
        },
    )
    made.append(mac)
    tag = mac.sign(sealed, mechanism=Mechanism.SHA256_HMAC)
    return bool(mac.verify(sealed, tag, mechanism=Mechanism.SHA256_HMAC))


def _wrapping(session: Any, made: list[Any], found: dict[str, Any]) -> None:
    """RFC 5649 wrap of an extractable key; then the two wraps a token must refuse."""
    kek = _aes(session, made, WRAP=True, UNWRAP=True)
    loose = _aes(session, made, EXTRACTABLE=True, ENCRYPT=True, DECRYPT=True)
    found["wrap_pad"] = _tries(lambda: kek.wrap_key(loose, mechanism=Mechanism.AES_KEY_WRAP_PAD))
    mechanism = Mechanism.AES_KEY_WRAP_PAD if found["wrap_pad"] else Mechanism.AES_KEY_WRAP
    fixed = _aes(session, made, ENCRYPT=True, DECRYPT=True)
    found["guards_non_extractable"] = not _tries(lambda: kek.wrap_key(fixed, mechanism=mechanism))
    found["unwrap_template"] = _enforces_unwrap_template(session, made)
    try:
        trusted_only = _aes(
            session, made, EXTRACTABLE=True, WRAP_WITH_TRUSTED=True, ENCRYPT=True, DECRYPT=True
        )
    except p11.PKCS11Error:
        found["guards_wrap_with_trusted"] = False
        return
    found["guards_wrap_with_trusted"] = not _tries(
        lambda: kek.wrap_key(trusted_only, mechanism=mechanism)
    )


def _enforces_unwrap_template(session: Any, made: list[Any]) -> bool:
    """A KEK held to kmtui's unwrap template, asked to unwrap a key back readable: a token that
    obeys ignores the template."""
    kek = _aes(session, made, WRAP=True, UNWRAP=True, UNWRAP_TEMPLATE=dict(templates.KEK_UNWRAP))
    loose = _aes(session, made, EXTRACTABLE=True, ENCRYPT=True, DECRYPT=True)
    blob = kek.wrap_key(loose, mechanism=Mechanism.AES_KEY_WRAP)
    try:
        copy = kek.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.AES,
            blob,
            mechanism=Mechanism.AES_KEY_WRAP,
            capabilities=0,
            template={
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.LABEL: PROBE_LABEL,
            },
        )
    except p11.PKCS11Error:
        return True
    made.append(copy)
    return not _tries(lambda: len(bytes(copy[Attribute.VALUE])) == 16)


def _data_object(session: Any, made: list[Any]) -> bool:
    made.append(
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.MODIFIABLE: True,
                Attribute.LABEL: PROBE_LABEL,
                Attribute.APPLICATION: PROBE_LABEL,
                Attribute.VALUE: b"kmtui profile probe",
            }
        )
    )
    return True


def _pairs(
    session: Any, made: list[Any], found: dict[str, Any], mechanisms: frozenset[Mechanism]
) -> None:
    """An EC P-256 and an RSA-2048 session pair, and the mechanisms self-checks sign with."""
    digest = hashlib.sha256(b"kmtui profile probe").digest()
    ec_pair = _pair(session, made, "EC-P256")
    found["ec"] = ec_pair is not None
    found["ec_sign"] = ""
    if ec_pair is not None and _tries(
        lambda: ec_pair[0].verify(
            digest, ec_pair[1].sign(digest, mechanism=Mechanism.ECDSA), mechanism=Mechanism.ECDSA
        )
    ):
        found["ec_sign"] = Mechanism.ECDSA.name
    rsa_pair = _pair(session, made, "RSA-2048")
    found["rsa"] = rsa_pair is not None
    found["rsa_sign"] = ""
    found["modulus_bits"] = rsa_pair is not None and _tries(
        lambda: int(rsa_pair[0][Attribute.MODULUS_BITS]) == 2048
    )
    if rsa_pair is None:
        return
    public, private = rsa_pair

    def signs(mechanism: Mechanism) -> bool:
        signature = private.sign(b"probe", mechanism=mechanism, **_pss(mechanism))
        return bool(public.verify(b"probe", signature, mechanism=mechanism, **_pss(mechanism)))

    for mechanism in (Mechanism.SHA256_RSA_PKCS, Mechanism.SHA256_RSA_PKCS_PSS):
        if mechanism in mechanisms and _tries(partial(signs, mechanism)):
            found["rsa_sign"] = mechanism.name
            break


def pss_params(mechanism: Mechanism) -> Any:
    """SHA-256, MGF1-SHA-256 and a 32-byte salt for RSA-PSS; None for other mechanisms."""
    if mechanism not in (Mechanism.SHA256_RSA_PKCS_PSS, Mechanism.RSA_PKCS_PSS):
        return None
    return (Mechanism.SHA256, MGF.SHA256, 32)


def _pss(mechanism: Mechanism) -> dict[str, Any]:
    param = pss_params(mechanism)
    return {} if param is None else {"mechanism_param": param}


def _pair(session: Any, made: list[Any], algorithm: str) -> tuple[Any, Any] | None:
    template = templates.build(algorithm, "sign", cka_id=PROBE_ID, label=PROBE_LABEL)
    public = {**template.public, Attribute.TOKEN: False}
    private = {**template.private, Attribute.TOKEN: False}
    for optional in OPTIONAL_ATTRIBUTES:  # a session pair needs none of them
        public.pop(optional, None)
        private.pop(optional, None)
    spec = template.algorithm
    try:
        pair = session.generate_keypair(
            spec.key_type,
            spec.bits if spec.key_type == KeyType.RSA else None,
            capabilities=0,
            mechanism=template.mechanism,
            public_template=public,
            private_template=private,
        )
    except p11.PKCS11Error:
        return None
    made.extend(pair)
    return pair[0], pair[1]
