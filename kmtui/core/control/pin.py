"""The token PIN as split knowledge: two custodians each hold one half and nobody knows both.

The PIN is the first half followed by the second, nothing added. A plain concatenation in a fixed
order needs both halves (each at least eight characters, so neither is a short guess away from the
whole), and it is the one combination custodians can reproduce by hand when a vendor's tool asks
for the PIN: the first holder types their half, the second types theirs into the same hidden
prompt. A hash or an XOR would need kmtui itself to recover the PIN. Which half is "first" is
fixed at `kmtui init` and written on each holder's envelope; the order never depends on who
types first or on their names, so a replaced custodian inherits the position with the half.

A half is printable ASCII without spaces: it must type the same on every keyboard layout and
every vendor's PIN prompt, and it must fit the `NAME HALF` lines of `--pin-halves-from`. The
halves live in these records only, never in a repr, a message, the trail or the database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kmtui.core import errors
from kmtui.core.control.totp import shown, valid_name

MIN_HALF_LENGTH = 8
"""The floor of every configured minimum: a half shorter than this is a guess away."""
MAX_HALF_LENGTH = 64
"""Two of these still fit every PIN length a PKCS#11 token we know of accepts (SoftHSM: 255)."""
POSITIONS = ("first", "second")
SPLIT, PROTECTED_PATH = "split", "protected-path"
LOGIN_MODES = (SPLIT, PROTECTED_PATH)

_HALF = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Half:
    """One custodian's half: who holds it, and the half itself (never shown)."""

    holder: str
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Half(holder={self.holder!r}, value=<hidden>)"


def check_minimum(minimum: int) -> int:
    """A configured minimum half length: never under MIN_HALF_LENGTH, never over the maximum."""
    if (
        not isinstance(minimum, int)
        or isinstance(minimum, bool)
        or not MIN_HALF_LENGTH <= minimum <= MAX_HALF_LENGTH
    ):
        raise errors.ConfigError(
            f"The minimum PIN half length must be a whole number from {MIN_HALF_LENGTH} to "
            f"{MAX_HALF_LENGTH}.",
            "Set [token] pin_half_min_length in config.toml, or leave it out for 8.",
        )
    return minimum


def check_half(half: Half, position: str, minimum: int = MIN_HALF_LENGTH) -> None:
    """Refuse a holder or a half that cannot be part of a PIN; the message never holds the half."""
    if not valid_name(half.holder):
        raise errors.UsageError(
            f"The {position} half's holder {shown(half.holder)} is not a valid operator name.",
            "Use 1 to 32 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    who = f"The {position} half ({half.holder})"
    if not half.value:
        raise errors.UsageError(f"{who} is empty.", f"{half.holder} types their half.")
    if len(half.value) < minimum:
        raise errors.UsageError(
            f"{who} is {len(half.value)} characters: each half must have at least {minimum}.",
            "Nothing was sent to the token.",
        )
    if len(half.value) > MAX_HALF_LENGTH:
        raise errors.UsageError(
            f"{who} is longer than {MAX_HALF_LENGTH} characters.", "Nothing was sent to the token."
        )
    if _HALF.fullmatch(half.value) is None:
        raise errors.UsageError(
            f"{who} holds a space, a control character or a character outside ASCII.",
            "A half is letters, digits and punctuation only. Nothing was sent to the token.",
        )


class PinHalves:
    """The two halves of a token PIN, from two different custodians, in their fixed order."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: Half, second: Half, *, minimum: int = MIN_HALF_LENGTH) -> None:
        minimum = check_minimum(minimum)
        check_half(first, POSITIONS[0], minimum)
        check_half(second, POSITIONS[1], minimum)
        if first.holder.casefold() == second.holder.casefold():
            raise errors.UsageError(
                f"Both halves were entered as {first.holder}'s: two different custodians hold "
                "the two halves.",
                "The holder of the other half types it. Nothing was sent to the token.",
            )
        self._first = first
        self._second = second

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]], *, minimum: int = MIN_HALF_LENGTH) -> PinHalves:
        """From (holder, half) pairs, first half first: exactly two of them."""
        if len(pairs) != 2:
            raise errors.UsageError(
                f"{len(pairs)} PIN halves were given: two custodians give one half each.",
                "One `NAME HALF` line per custodian, the first half's holder first.",
            )
        (a, x), (b, y) = pairs
        return cls(Half(a, x), Half(b, y), minimum=minimum)

    @property
    def holders(self) -> tuple[str, str]:
        """Who entered the halves, first half first: what the trail records."""
        return (self._first.holder, self._second.holder)

    def pin(self) -> str:
        """The token PIN: the first half, then the second."""
        return self._first.value + self._second.value

    def for_new_pin(self) -> PinHalves:
        """These halves as a new PIN, refused when equal: it must not be one secret twice."""
        if self._first.value == self._second.value:
            raise errors.UsageError(
                "The two halves are the same: then either holder knows the whole PIN.",
                "Each custodian chooses their own half. Nothing was changed.",
            )
        return self

    def __repr__(self) -> str:
        return f"PinHalves(holders={self.holders!r}, halves=<hidden>)"


@dataclass(frozen=True)
class ProtectedPath:
    """Log-in through the token's own authentication (PIN pad, PED keys, quorum cards): kmtui
    sends no PIN (C_Login with a NULL PIN, CKF_PROTECTED_AUTHENTICATION_PATH)."""


Credential = PinHalves | ProtectedPath
"""What a log-in is given: two halves, or the token's protected authentication path."""


def audit_params(credential: Credential, prefix: str = "") -> dict[str, object]:
    """What the trail records of a log-in: how, and who entered the halves (names only)."""
    if isinstance(credential, ProtectedPath):
        return {f"{prefix}login": PROTECTED_PATH}
    return {f"{prefix}login": SPLIT, f"{prefix}custodians": list(credential.holders)}


def pin_or_protected(credential: Credential) -> str | None:
    """The PIN to send, or None for the token's protected authentication path."""
    return None if isinstance(credential, ProtectedPath) else credential.pin()


def parse_lines(text: str) -> list[tuple[str, str]]:
    """(holder, half) pairs from `NAME HALF` lines ('#' comments and blank lines skipped); a
    malformed line is named by its number only, never shown."""
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise errors.UsageError(
                f"PIN halves line {number} is not `NAME HALF`.",
                "One custodian per line: their name, a space, their half.",
            )
        pairs.append((parts[0], parts[1]))
    return pairs
