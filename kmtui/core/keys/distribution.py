"""Keys that travel: export under a key-encryption key or a recipient's RSA public key, import,
and keys held as components.

All of it runs through the gate (dual control, intent and outcome audited). Wrapped files carry a
manifest (key id, version, algorithm, KCV, wrapping key, mechanism) so the receiving side can check
what it unwrapped. Components (split knowledge) are XOR shares: no custodian sees the whole key.
SoftHSM 2.6 offers no CKM_XOR_BASE_AND_DATA, so the shares are combined in this process's memory
for one C_CreateObject and dropped; the KCV is then computed on the token.

Recipients' RSA public keys come from PEM and wrap with RSA-OAEP. SoftHSM 2.6.1 accepts OAEP only
with SHA-1 and MGF1-SHA1 (SHA-256 parameters: CKR_ARGUMENTS_BAD), hence "rsa-oaep-sha1". Such a
file is opened by the recipient's private key on the recipient's own HSM, never here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pkcs11 import MGF, Mechanism

from kmtui.core import errors
from kmtui.core.control import lifecycle, policy
from kmtui.core.control.lifecycle import Use
from kmtui.core.control.operations import ApprovalInput, Operation, OpKind
from kmtui.core.models import Key, KeyState, KeyVersion, Outcome, iso, new_key_id, utcnow
from kmtui.core.safetext import clean
from kmtui.core.token import officer, templates
from kmtui.service import Apply, Prepared, Workstation, session_context

FILE_FORMAT = "kmtui-wrapped-key-v1"
MECHANISMS = {"aes-key-wrap-pad": Mechanism.AES_KEY_WRAP_PAD}  # RFC 5649; what import unwraps
RSA_OAEP = "rsa-oaep-sha1"
WRAP_MECHANISMS: dict[str, tuple[Mechanism, Any]] = {
    "aes-key-wrap-pad": (Mechanism.AES_KEY_WRAP_PAD, None),
    # SoftHSM 2.6.1 refuses any other OAEP hash (CKR_ARGUMENTS_BAD); the label is empty.
    RSA_OAEP: (Mechanism.RSA_PKCS_OAEP, (Mechanism.SHA_1, MGF.SHA1, None)),
}
MAX_PEM = 16 * 1024
MAX_FILE = 64 * 1024
MAX_COMPONENTS = 9


def kcv_of(value: bytes) -> str:
    """The standard AES KCV: first 3 bytes of AES-ECB(value, 16 zero bytes)."""
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()  # noqa: S305 - KCV only
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex().upper()


def _xor(parts: Sequence[bytes]) -> bytes:
    out = bytearray(len(parts[0]))
    for part in parts:
        for i, byte in enumerate(part):
            out[i] ^= byte
    return bytes(out)


def _kek(ws: Workstation, ref: str) -> Key:
    kek = ws.get_key(ref)
    if kek.purpose != "wrap" or not templates.ALGORITHMS[kek.algorithm].symmetric:
        raise errors.UsageError(
            f"{clean(kek.label, 60)!r} is not an AES key-encryption key.",
            "Name a key created with --purpose wrap.",
        )
    lifecycle.require_use(kek.state, Use.WRAP if kek.state == KeyState.ACTIVE else Use.UNWRAP)
    return kek


# -- export -----------------------------------------------------------------------------------


def prepare_export(ws: Workstation, ref: str, kek_ref: str) -> Prepared:
    key = ws.get_key(ref)
    wrapper = ws.get_key(kek_ref)
    kek = _recipient(wrapper) if "recipient" in wrapper.tags else _kek(ws, ref=kek_ref)
    if not key.exportable:
        raise errors.PolicyRefused(
            f"Key {clean(key.label, 60)!r} is not exportable: policy {key.policy!r} made it "
            "non-extractable on the token, so no one can take it out, by design.",
            "Keys that must travel are created under an exportable policy (e.g. exportable-dek).",
        )
    if lifecycle.ALLOWED_USES[key.state].isdisjoint({Use.ENCRYPT, Use.DECRYPT}):
        raise errors.PolicyRefused(f"A key in state {key.state} is not exported.")
    recipient = "recipient" in kek.tags
    if "trusted" not in kek.tags:
        if recipient:
            raise errors.PolicyRefused(
                f"{clean(kek.label, 60)!r} is not a trusted recipient key: exportable keys are "
                "WRAP_WITH_TRUSTED, so the token wraps them only under a trusted wrapping key.",
                "The security officer imports the recipient's key with "
                "`kmtui keys import-public --trusted` after checking its fingerprint.",
            )
        raise errors.PolicyRefused(
            f"{clean(kek.label, 60)!r} is not a trusted key-encryption key.",
            "Exportable keys are wrapped only under a KEK the security officer created "
            "(`kmtui keys create --purpose wrap --trusted`).",
        )
    current, kek_version = _current(key), _current(kek)
    params: dict[str, Any] = {
        "label": key.label,
        "version": current.version,
        "algorithm": key.algorithm,
        "kcv": current.kcv,
        "wrapping_key": kek.id,
    }
    if recipient:
        params.update(wrapping_key_fingerprint=kek_version.fingerprint, mechanism=RSA_OAEP)
        under = f"{clean(kek.label, 60)!r} (RSA-OAEP, {kek_version.fingerprint[:23]})"
    else:
        params.update(wrapping_key_kcv=kek_version.kcv, mechanism="aes-key-wrap-pad")
        under = f"{clean(kek.label, 60)!r} (KCV {kek_version.kcv})"
    op = Operation(OpKind.KEY_EXPORT, key.id, params)
    summary = f"Export key {clean(key.label, 60)!r} (KCV {current.kcv}) wrapped under {under}"
    return Prepared(op, summary, key, ws.rules(key.policy).requirement(op.kind).quorum)


def run_export(
    ws: Workstation,
    prepared: Prepared,
    approvals: Sequence[ApprovalInput],
    out: Path,
    *,
    actor: str = "console",
) -> dict[str, Any]:
    """Wrap on the token and write the file (owner-only, never overwriting one)."""
    p = prepared.operation.params
    key = ws.get_key(prepared.operation.key_id)
    kek = ws.get_key(str(p["wrapping_key"]))

    mechanism, param = WRAP_MECHANISMS[str(p["mechanism"])]
    # The manifest names the wrapping key by what identifies it: a KEK's KCV, a public key's
    # fingerprint (SHA-256 of its SubjectPublicKeyInfo).
    named = {k: p[k] for k in ("wrapping_key_kcv", "wrapping_key_fingerprint") if k in p}

    def work(result: dict[str, Any]) -> Apply:
        blob = ws.hsm.wrapping.wrap(_current(key).cka_id, _current(kek).cka_id, mechanism, param)
        manifest = {
            "key_id": key.id,
            "version": p["version"],
            "label": key.label,
            "algorithm": key.algorithm,
            "purpose": key.purpose,
            "kcv": p["kcv"],
            "wrapping_key_id": kek.id,
            **named,
            "mechanism": p["mechanism"],
            "exported_at": iso(utcnow()),
        }
        document = {
            "format": FILE_FORMAT,
            "manifest": manifest,
            "wrapped": base64.b64encode(blob).decode("ascii"),
        }
        _write_new(out, json.dumps(document, indent=2, sort_keys=True) + "\n")
        result.update(file=str(out), blob_sha256=hashlib.sha256(blob).hexdigest())
        return lambda: ws.store.link_keys(key.id, kek.id, "wrapped-by")

    return ws.execute(prepared, approvals, work, rules=ws.rules(key.policy), actor=actor)


def _write_new(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise errors.UsageError(
            f"{path} already exists.", "kmtui never overwrites a key file."
        ) from None
    except OSError as exc:
        raise errors.UsageError(f"Cannot write {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)


# -- import -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrappedFile:
    manifest: dict[str, Any]
    blob: bytes


def read_wrapped(path: Path) -> WrappedFile:
    """Parse a wrapped-key file, saying which part is wrong when it is."""
    try:
        raw = path.read_bytes()[: MAX_FILE + 1]
    except OSError as exc:
        raise errors.UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    if len(raw) > MAX_FILE:
        raise errors.UsageError(f"{path} is too large to be a wrapped-key file.")
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise errors.UsageError(
            f"{path} is not a complete kmtui key file (truncated or damaged JSON).",
            "Ask for the file again.",
        ) from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise errors.UsageError(f"{path} is not a {FILE_FORMAT} file.")
    manifest = document.get("manifest")
    needed = ("algorithm", "purpose", "kcv", "mechanism", "label")
    if not isinstance(manifest, dict) or any(not isinstance(manifest.get(k), str) for k in needed):
        raise errors.UsageError(
            f"The manifest in {path} is incomplete (needs {', '.join(needed)})."
        )
    if manifest["mechanism"] == RSA_OAEP:
        raise errors.UsageError(
            f"{path} is wrapped with RSA-OAEP under a recipient's public key (fingerprint "
            f"{clean(str(manifest.get('wrapping_key_fingerprint', '?')), 80)}): it is meant "
            "for that recipient's private key, on the recipient's own HSM, and cannot be "
            "imported here.",
            "Send it to the recipient; kmtui imports only files wrapped under a KEK it holds.",
        )
    if manifest["mechanism"] not in MECHANISMS:
        raise errors.UsageError(f"Unknown wrapping mechanism {clean(manifest['mechanism'], 40)!r}.")
    try:
        blob = base64.b64decode(str(document.get("wrapped", "")), validate=True)
    except (binascii.Error, ValueError):
        raise errors.UsageError(
            f"The wrapped key in {path} is not valid base64 (damaged)."
        ) from None
    if len(blob) < 24 or len(blob) % 8:
        raise errors.UsageError(f"The wrapped key in {path} is truncated ({len(blob)} bytes).")
    return WrappedFile(manifest, blob)


def prepare_import(
    ws: Workstation,
    wrapped: WrappedFile,
    kek_ref: str,
    *,
    label: str,
    policy_name: str = "default",
    kcv: str = "",
) -> Prepared:
    kek = _kek(ws, kek_ref)
    manifest = wrapped.manifest
    typed = kcv.strip().upper()
    if typed and typed != str(manifest["kcv"]).upper():
        raise errors.PolicyRefused(
            f"The KCV typed ({clean(typed, 12)}) differs from the file's manifest "
            f"({clean(manifest['kcv'], 12)}).",
            "Check the paper form; nothing was imported.",
        )
    key_id = new_key_id()
    template = templates.build(
        str(manifest["algorithm"]),
        str(manifest["purpose"]),
        cka_id=templates.cka_id(key_id, 1),
        label=label,
    )
    rules = ws.rules(policy_name)
    policy.check_create(rules, policy_name, template.algorithm.name, template.purpose.value, False)
    op = Operation(
        OpKind.KEY_IMPORT,
        key_id,
        {
            "label": label,
            "algorithm": template.algorithm.name,
            "purpose": template.purpose.value,
            "policy": policy_name,
            "exportable": False,
            "cka_id": template.cka_id.hex(),
            "expected_kcv": str(manifest["kcv"]).upper(),
            "unwrapping_key": kek.id,
            "mechanism": manifest["mechanism"],
            "source_key_id": str(manifest.get("key_id", "")),
            "blob_sha256": hashlib.sha256(wrapped.blob).hexdigest(),
        },
    )
    summary = (
        f"Import {template.algorithm.name} key as {clean(label, 60)!r} (expected KCV "
        f"{op.params['expected_kcv']}) unwrapped by {clean(kek.label, 60)!r}"
    )
    return Prepared(op, summary, None, rules.requirement(op.kind).quorum)


def run_import(
    ws: Workstation,
    prepared: Prepared,
    wrapped: WrappedFile,
    approvals: Sequence[ApprovalInput],
    *,
    actor: str = "console",
) -> Key:
    """Check the KCV on a session twin first; only a matching key lands on the token."""
    op = prepared.operation
    p = op.params
    kek = ws.get_key(str(p["unwrapping_key"]))
    template = templates.build(
        str(p["algorithm"]),
        str(p["purpose"]),
        cka_id=bytes.fromhex(str(p["cka_id"])),
        label=str(p["label"]),
    )
    mechanism = MECHANISMS[str(p["mechanism"])]

    def work(result: dict[str, Any]) -> Apply:
        observed = ws.hsm.wrapping.kcv_of_blob(
            _current(kek).cka_id, wrapped.blob, mechanism, template
        )
        result["kcv"] = observed
        if observed != p["expected_kcv"]:
            raise errors.PolicyRefused(
                f"KCV mismatch: the token computed {observed}, the manifest says "
                f"{p['expected_kcv']}. Wrong key-encryption key, or a substituted file.",
                "Nothing was registered.",
            )
        ws.hsm.wrapping.unwrap(_current(kek).cka_id, wrapped.blob, mechanism, template)
        return _register(ws, op, observed, "imported", links=[(kek.id, "wrapped-by")])

    ws.execute(prepared, approvals, work, rules=ws.rules(str(p["policy"])), actor=actor)
    return ws.get_key(op.key_id)


def _register(
    ws: Workstation,
    op: Operation,
    kcv: str,
    tag: str,
    links: Sequence[tuple[str, str]] = (),
    *,
    fingerprint: str = "",
    more_tags: Sequence[str] = (),
) -> Apply:
    version = KeyVersion(
        op.key_id,
        1,
        KeyState.ACTIVE,
        bytes.fromhex(str(op.params["cka_id"])),
        ws.hsm.info().serial,
        iso(utcnow()),
        kcv=kcv,
        fingerprint=fingerprint,
    )
    key = ws.created_key(op.key_id, dict(op.params), version)
    key.tags = [tag, *more_tags]

    def apply() -> None:
        ws.store.add_key(key)
        for related, relation in links:
            ws.store.link_keys(key.id, related, relation)

    return apply


# -- recipients' RSA public keys ---------------------------------------------------------------


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's RSA public key as read from PEM (public values only)."""

    modulus: int
    exponent: int
    fingerprint: str  # "SHA256:" + hex of the DER SubjectPublicKeyInfo, as for generated keys

    @property
    def bits(self) -> int:
        return self.modulus.bit_length()


def read_recipient_pem(path: Path) -> RecipientKey:
    """An RSA public key (or the key of an X.509 certificate) from a PEM file; anything else,
    or a key shorter than 2048 bits, is refused saying what is wrong."""
    try:
        raw = path.read_bytes()[: MAX_PEM + 1]
    except OSError as exc:
        raise errors.UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    if len(raw) > MAX_PEM:
        raise errors.UsageError(f"{path} is too large to be a PEM public key.")
    if b"PRIVATE KEY-----" in raw:
        raise errors.UsageError(
            f"{path} holds a PRIVATE key. Never send or import a recipient's private key.",
            "Ask the recipient for their PUBLIC key (PEM, 'BEGIN PUBLIC KEY').",
        )
    public: Any
    try:
        if b"-----BEGIN CERTIFICATE-----" in raw:
            public = x509.load_pem_x509_certificate(raw).public_key()
        else:
            public = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnicodeDecodeError):
        raise errors.UsageError(
            f"{path} is not a readable PEM public key (damaged, truncated or another format).",
            "Ask the recipient for their RSA public key as PEM ('BEGIN PUBLIC KEY').",
        ) from None
    if not isinstance(public, rsa.RSAPublicKey):
        kind = type(public).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
        raise errors.UsageError(
            f"{path} holds a non-RSA public key ({clean(kind, 40)}); recipient keys for "
            "RSA-OAEP wrapping must be RSA.",
            "Ask the recipient for an RSA public key of at least 2048 bits.",
        )
    numbers = public.public_numbers()
    if public.key_size < templates.MIN_RECIPIENT_BITS:
        raise errors.UsageError(
            f"The recipient key in {path} is too short: RSA-{public.key_size}, kmtui needs at "
            f"least {templates.MIN_RECIPIENT_BITS} bits.",
            "Ask the recipient for an RSA key of 2048, 3072 or 4096 bits.",
        )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return RecipientKey(numbers.n, numbers.e, "SHA256:" + hashlib.sha256(der).hexdigest())


def _refused(
    ws: Workstation, action: str, exc: errors.KmtuiError, actor: str, **params: Any
) -> None:
    """A refusal before the gate is audited too: what was refused and why, never a value."""
    ws.audit.append(
        action,
        actor=actor,
        outcome=Outcome.REFUSED,
        params={**params, "error": type(exc).__name__, "message": exc.message, **session_context()},
    )


def load_wrapped(
    ws: Workstation, path: Path, *, raw: RawBlob | None = None, actor: str = "console"
) -> WrappedFile:
    """`read_wrapped` (or `read_raw`), with a refused file audited."""
    try:
        return read_raw(path, raw) if raw is not None else read_wrapped(path)
    except errors.KmtuiError as exc:
        _refused(ws, str(OpKind.KEY_IMPORT), exc, actor, file=path.name)
        raise


@dataclass(frozen=True)
class RawBlob:
    """What a bare wrapped blob does not say about itself: typed by the custodian."""

    algorithm: str
    purpose: str
    kcv: str
    mechanism: str = "aes-key-wrap-pad"


def read_raw(path: Path, raw: RawBlob) -> WrappedFile:
    """A bare RFC 5649 blob (binary, or base64/hex text); the KCV from paper is required."""
    try:
        data = path.read_bytes()[: MAX_FILE + 1]
    except OSError as exc:
        raise errors.UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    blob = _decode_blob(data)
    if len(blob) < 24 or len(blob) % 8 or len(blob) > MAX_FILE:
        raise errors.UsageError(f"{path} does not hold an AES-wrapped key ({len(blob)} bytes).")
    if raw.mechanism not in MECHANISMS or raw.mechanism == "rsa-oaep-sha1":
        raise errors.UsageError("A raw blob is unwrapped with aes-key-wrap-pad only.")
    kcv = raw.kcv.strip().upper()
    if len(kcv) != 6 or any(c not in "0123456789ABCDEF" for c in kcv):
        raise errors.UsageError(
            "A raw blob needs the key's KCV (6 hex digits) from the paper "
            "form: nothing else proves what it holds."
        )
    manifest = {
        "algorithm": raw.algorithm,
        "purpose": raw.purpose,
        "kcv": kcv,
        "mechanism": raw.mechanism,
        "label": path.name,
    }
    return WrappedFile(manifest, blob)


def _decode_blob(data: bytes) -> bytes:
    """Hex or base64 text as custodians receive it, else the bytes as they are."""
    try:
        text = data.strip().decode("ascii")
    except UnicodeDecodeError:
        return data
    try:
        return bytes.fromhex(text)
    except ValueError:
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return data


def enter_component(
    ws: Workstation,
    typed: str,
    typed_kcv: str,
    entered: Sequence[Component],
    custodian: str,
    size: int,
    *,
    actor: str = "console",
) -> Component:
    """One custodian's component, checked against its own KCV; a refusal is audited (who,
    which component and why — never the component)."""
    number = len(entered) + 1
    try:
        value = parse_component(typed, size)
        kcv = check_component(value, typed_kcv, [c.value for c in entered], number)
    except errors.KmtuiError as exc:
        _refused(ws, "key.components", exc, actor, custodian=custodian, component=number)
        raise
    return Component(custodian, value, kcv)


def load_recipient(ws: Workstation, path: Path, *, actor: str = "console") -> RecipientKey:
    """`read_recipient_pem`, with a refused file audited (which file, and why; no key value)."""
    try:
        return read_recipient_pem(path)
    except errors.KmtuiError as exc:
        _refused(ws, str(OpKind.KEY_IMPORT), exc, actor, recipient_pem=path.name)
        raise


def _recipient(key: Key) -> Key:
    lifecycle.require_use(key.state, Use.WRAP)
    return key


def prepare_import_public(
    ws: Workstation,
    recipient: RecipientKey,
    *,
    label: str,
    trusted: bool = False,
    policy_name: str = "default",
) -> Prepared:
    """Register a recipient's RSA public key (dual-controlled). The policy's algorithm list
    governs keys generated here; a recipient's key is bounded by `templates.recipient` (RSA of
    2048, 3072 or 4096 bits, wrap only) and by the policy's approvals and lifecycle."""
    key_id = new_key_id()
    template = templates.recipient(
        recipient.modulus,
        recipient.exponent,
        cka_id=templates.cka_id(key_id, 1),
        label=label,
        trusted=trusted,
    )
    rules = ws.rules(policy_name)
    for row in ws.store.rows(
        "SELECT key_id FROM key_versions WHERE fingerprint = ?", (recipient.fingerprint,)
    ):
        other = ws.store.get_key(str(row["key_id"]))
        if other is not None and other.state not in (
            KeyState.DESTROYED,
            KeyState.DESTROYED_COMPROMISED,
        ):
            raise errors.UsageError(
                f"This public key is already registered as {clean(other.label, 60)!r} "
                f"({other.id}).",
                "Use that key, or destroy it first to register the key again.",
            )
    op = Operation(
        OpKind.KEY_IMPORT,
        key_id,
        {
            "label": label,
            "algorithm": template.algorithm.name,
            "purpose": template.purpose.value,
            "policy": policy_name,
            "exportable": False,
            "trusted": trusted,
            "recipient": True,
            "cka_id": template.cka_id.hex(),
            "fingerprint": recipient.fingerprint,
        },
    )
    summary = (
        f"Import recipient public key {clean(label, 60)!r} ({template.algorithm.name}, "
        f"{recipient.fingerprint})"
        + (" as TRUSTED (security officer): it may wrap exportable keys" if trusted else "")
    )
    return Prepared(op, summary, None, rules.requirement(op.kind).quorum)


def run_import_public(
    ws: Workstation,
    prepared: Prepared,
    recipient: RecipientKey,
    approvals: Sequence[ApprovalInput],
    *,
    officer_pin: str = "",
    actor: str = "console",
) -> Key:
    """Create the PUBLIC_KEY object (by the security officer when trusted) and register it."""
    op = prepared.operation
    p = op.params
    if recipient.fingerprint != p["fingerprint"]:
        raise errors.UsageError("This is not the public key the operation was prepared for.")
    trusted = bool(p["trusted"])
    if trusted and not officer_pin:
        raise errors.UsageError(
            "A trusted recipient key is imported by the security officer.",
            "The SO enters the SO PIN (--so-pin-file for scripts).",
        )
    template = templates.recipient(
        recipient.modulus,
        recipient.exponent,
        cka_id=bytes.fromhex(str(p["cka_id"])),
        label=str(p["label"]),
        trusted=trusted,
    )

    def work(result: dict[str, Any]) -> Apply:
        try:
            if trusted:
                officer.create_trusted_recipient(ws.hsm, officer_pin, template)
                made = ws.hsm.keygen.adopt(template)
            else:
                made = ws.hsm.keygen.create_public(template)
            if made.fingerprint != p["fingerprint"]:
                raise errors.TemplateMismatch(
                    f"The token holds a public key with fingerprint {made.fingerprint[:23]}, "
                    f"not {str(p['fingerprint'])[:23]}.",
                    "Nothing was registered.",
                    {"PUBLIC_KEY.fingerprint": (p["fingerprint"], made.fingerprint)},
                )
        except errors.TemplateMismatch:
            ws.hsm.objects.destroy(template.cka_id)  # a public object: nothing secret is lost
            raise
        result.update(fingerprint=made.fingerprint, trusted=trusted)
        more = ["trusted"] if trusted else []
        return _register(ws, op, "", "recipient", fingerprint=made.fingerprint, more_tags=more)

    ws.execute(prepared, approvals, work, rules=ws.rules(str(p["policy"])), actor=actor)
    return ws.get_key(op.key_id)


# -- components (split knowledge) ----------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    custodian: str
    value: bytes = b""
    kcv: str = ""

    def __repr__(self) -> str:  # a component must never reach a log or a traceback
        return f"Component(custodian={self.custodian!r}, kcv={self.kcv!r}, value=<hidden>)"


def parse_component(text: str, size: int) -> bytes:
    """Hex as custodians type it (spaces and dashes allowed); the length must be exact."""
    cleaned = "".join(ch for ch in text if ch not in " -\t")
    try:
        value = bytes.fromhex(cleaned)
    except ValueError:
        raise errors.UsageError(
            "A component is hexadecimal digits (0-9, A-F), in groups if you like.",
            "Type it again from the form.",
        ) from None
    if len(value) != size:
        raise errors.UsageError(
            f"The component has {len(value)} bytes; this key needs {size}.",
            "A digit group is missing or doubled: type it again.",
        )
    return value


def size_of(algorithm: str) -> int:
    return templates.algorithm(algorithm).bits // 8


def grouped(value: bytes) -> str:
    """Hex in groups of four, as printed on a component form."""
    text = value.hex().upper()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def write_component(path: Path, share: Component) -> None:
    """One custodian's component form (owner-only file, never overwriting one)."""
    _write_new(
        path, f"custodian {share.custodian}\ncomponent {grouped(share.value)}\nkcv {share.kcv}\n"
    )


def read_component(path: Path, size: int) -> tuple[bytes, str]:
    try:
        lines = dict(
            line.split(" ", 1)
            for line in path.read_text(encoding="ascii").splitlines()
            if " " in line
        )
    except (OSError, UnicodeDecodeError):
        raise errors.UsageError(f"Cannot read the component form {path}.") from None
    if "component" not in lines or "kcv" not in lines:
        raise errors.UsageError(f"{path} lacks a component or kcv line.")
    return parse_component(lines["component"], size), lines["kcv"].strip()


def check_component(value: bytes, typed_kcv: str, entered: Sequence[bytes], number: int) -> str:
    """Each component's own KCV catches a typo at that component, not at the end."""
    kcv = kcv_of(value)
    if typed_kcv.strip().upper() != kcv:
        raise errors.UsageError(
            f"Component {number} does not match its KCV "
            f"(computed {kcv}, form says {clean(typed_kcv, 12)}).",
            f"Custodian {number}: type component {number} again.",
        )
    if value in entered:
        raise errors.UsageError(
            f"Component {number} is the same as an earlier component.",
            "Each custodian enters their own, different component.",
        )
    return kcv


def prepare_components(
    ws: Workstation,
    *,
    label: str,
    algorithm: str,
    purpose: str,
    custodians: Sequence[str],
    policy_name: str = "default",
    generate: bool = True,
    expected_kcv: str = "",
) -> Prepared:
    """Generate a key as XOR components, or enter one from them (`generate=False`)."""
    rules = ws.rules(policy_name)
    names = list(custodians)
    if len(names) < rules.min_components:
        raise errors.PolicyRefused(
            f"Policy {policy_name!r} needs at least {rules.min_components} components.",
            "Name one custodian per component.",
        )
    if len(set(names)) != len(names) or len(names) > MAX_COMPONENTS:
        raise errors.UsageError("Each component needs its own custodian (2 to 9, no repeats).")
    key_id = new_key_id()
    template = templates.build(algorithm, purpose, cka_id=templates.cka_id(key_id, 1), label=label)
    if not template.algorithm.symmetric or template.algorithm.key_type.name != "AES":
        raise errors.UsageError("Components are for AES keys.")
    policy.check_create(rules, policy_name, template.algorithm.name, template.purpose.value, False)
    kind = OpKind.KEY_CREATE if generate else OpKind.KEY_IMPORT
    op = Operation(
        kind,
        key_id,
        {
            "label": label,
            "algorithm": template.algorithm.name,
            "purpose": template.purpose.value,
            "policy": policy_name,
            "exportable": False,
            "cka_id": template.cka_id.hex(),
            "components": len(names),
            "custodians": names,
            "expected_kcv": expected_kcv.strip().upper(),
        },
    )
    verb = "Generate" if generate else "Enter"
    warning = " (only 2 components: weaker split knowledge)" if len(names) == 2 else ""
    summary = (
        f"{verb} {template.algorithm.name} key {clean(label, 60)!r} as {len(names)} "
        f"components held by {', '.join(names)}{warning}"
    )
    return Prepared(op, summary, None, rules.requirement(kind).quorum)


def run_components(
    ws: Workstation,
    prepared: Prepared,
    approvals: Sequence[ApprovalInput],
    components: Sequence[Component] | None = None,
    *,
    actor: str = "console",
) -> tuple[Key, list[Component]]:
    """Create the key on the token from components (generated here when none are given)."""
    op = prepared.operation
    p = op.params
    template = templates.build(
        str(p["algorithm"]),
        str(p["purpose"]),
        cka_id=bytes.fromhex(str(p["cka_id"])),
        label=str(p["label"]),
    )
    size = template.algorithm.bits // 8
    names = [str(n) for n in p["custodians"]]
    if components is None:
        values = [secrets.token_bytes(size) for _ in names]
        shares = [Component(n, v, kcv_of(v)) for n, v in zip(names, values, strict=True)]
    else:
        shares = list(components)
        if [c.custodian for c in shares] != names:
            raise errors.UsageError("The components do not come from the custodians named.")

    def work(result: dict[str, Any]) -> Apply:
        whole = _xor([c.value for c in shares])
        expected = kcv_of(whole)
        observed = ws.hsm.keygen.create_from_value(whole, template)
        del whole
        result.update(kcv=observed, custodians=names, component_checks=[c.kcv for c in shares])
        if observed != expected or (p["expected_kcv"] and observed != p["expected_kcv"]):
            ws.hsm.objects.destroy(template.cka_id)
            raise errors.PolicyRefused(
                f"The combined key's KCV is {observed}, expected "
                f"{p['expected_kcv'] or expected}: a component was mistyped.",
                "Nothing was registered; enter the components again.",
            )
        return _register(ws, op, observed, "components")

    ws.execute(prepared, approvals, work, rules=ws.rules(str(p["policy"])), actor=actor)
    return ws.get_key(op.key_id), shares if components is None else []


def _current(key: Key) -> KeyVersion:
    current = key.current
    if current is None:
        raise errors.UsageError(f"Key {clean(key.label, 60)!r} has no current version.")
    return current
