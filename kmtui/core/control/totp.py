"""TOTP as dual control uses it (RFC 6238, SHA-1, six digits, 30 s) and operator names: pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import secrets
from dataclasses import dataclass, field
from typing import TypeGuard

import pyotp
import segno

from kmtui.core import errors
from kmtui.core.models import Role
from kmtui.core.safetext import clean

ISSUER = "kmtui"
DIGITS = 6
STEP_SECONDS = 30
WINDOW_STEPS = 1  # codes of the previous and the next step are accepted too (clock drift)
SEED_BYTES = 20  # 160 bits, the length RFC 4226 recommends for HMAC-SHA-1

_CODE = re.compile(r"[0-9]{6}")  # a literal range: ASCII digits only, unlike \d
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_FINGERPRINT_KEY = b"kmtui seed fingerprint v1"


@dataclass(frozen=True, repr=False)
class Enrollment:
    """Shown once to the new operator; the URI and the QR code both carry the seed."""

    name: str
    role: Role
    otpauth_uri: str = field(repr=False)
    qr_text: str = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"Enrollment(name={self.name!r}, role={str(self.role)!r}, "
            "otpauth_uri=<hidden>, qr_text=<hidden>)"
        )

    def __str__(self) -> str:
        return repr(self)


def _totp(seed_b32: str) -> pyotp.TOTP:
    return pyotp.TOTP(seed_b32, digits=DIGITS, digest=hashlib.sha1, interval=STEP_SECONDS)


def totp(seed: bytes) -> pyotp.TOTP:
    return _totp(base64.b32encode(seed).decode("ascii"))


def step(at: float) -> int:
    return int(at // STEP_SECONDS)


def current_code(seed_b32: str, at: float) -> str:
    """The code an authenticator shows at `at` (tests, and the demo's stand-in for phones)."""
    return _totp(seed_b32).generate_otp(step(at))


def matching_step(seed: bytes, code: str, now: int) -> int | None:
    """The step within the window whose code is `code`, compared in constant time."""
    generator = totp(seed)
    given = code.encode("ascii")
    matched: int | None = None
    for candidate in range(now - WINDOW_STEPS, now + WINDOW_STEPS + 1):
        if hmac.compare_digest(generator.generate_otp(candidate).encode("ascii"), given):
            matched = candidate
    return matched


def well_formed(code: object) -> TypeGuard[str]:
    return isinstance(code, str) and len(code) == DIGITS and _CODE.fullmatch(code) is not None


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def enrollment(name: str, role: Role, seed: bytes) -> Enrollment:
    """The otpauth URI and its QR code for a new seed."""
    uri = totp(seed).provisioning_uri(name=name, issuer_name=ISSUER)
    return Enrollment(name, role, uri, _qr_text(uri))


def fingerprint(seed: bytes) -> str:
    """Detects a seed already in use without storing it (160 random bits: no guessing back)."""
    return hmac.new(_FINGERPRINT_KEY, seed, hashlib.sha256).hexdigest()


def seal_aad(name: str) -> bytes:
    """Binds a sealed seed to its operator: a blob copied to another row does not unseal."""
    return b"kmtui-totp:" + name.encode("ascii")


def _qr_text(uri: str) -> str:
    """Half-block QR code, plain text (no escape sequences) so any terminal or widget shows it."""
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


# -- operator names and roles -------------------------------------------------------------------


def valid_name(name: object) -> bool:
    """1-32 of [A-Za-z0-9._-], starting alphanumeric and not all digits (a code look-alike)."""
    return (
        isinstance(name, str)
        and len(name) <= 32
        and _NAME.fullmatch(name) is not None
        and not name.isdigit()
    )


def check_name(name: str) -> None:
    if not valid_name(name):
        raise errors.UsageError(
            f"{shown(name)} is not a valid operator name.",
            "Use 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit and "
            "not only digits.",
        )


def shown(name: object) -> str:
    """A name as it may appear in a message or the audit trail (an invalid one is not echoed)."""
    return repr(name) if valid_name(name) else "(invalid name)"


def role_of(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise errors.UsageError(
            f"{clean(role, 40)!r} is not a role.",
            f"Choose one of: {', '.join(r.value for r in Role)}.",
        ) from None
