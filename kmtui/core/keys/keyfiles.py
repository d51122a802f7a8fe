"""Files that carry keys: wrapped-key files with their manifest, bare wrapped blobs, and
recipients' RSA public keys as PEM. Parsing only: each refusal says which part is wrong.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import MGF, Mechanism

from kmtui.core import errors
from kmtui.core.safetext import clean
from kmtui.core.token import templates

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


def write_new(path: Path, text: str) -> None:
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
