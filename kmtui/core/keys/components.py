"""Keys held as components (split knowledge): XOR shares, each checked by its own KCV.

SoftHSM 2.6 offers no CKM_XOR_BASE_AND_DATA, so the shares are combined in this process's memory
for one C_CreateObject and dropped; the KCV is then computed on the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kmtui.core import errors
from kmtui.core.keys.keyfiles import write_new
from kmtui.core.safetext import clean
from kmtui.core.token import templates

MAX_COMPONENTS = 9


def kcv_of(value: bytes) -> str:
    """The standard AES KCV: first 3 bytes of AES-ECB(value, 16 zero bytes)."""
    encryptor = Cipher(algorithms.AES(value), modes.ECB()).encryptor()  # noqa: S305 - KCV only
    return (encryptor.update(bytes(16)) + encryptor.finalize())[:3].hex().upper()


def xor(parts: Sequence[bytes]) -> bytes:
    out = bytearray(len(parts[0]))
    for part in parts:
        for i, byte in enumerate(part):
            out[i] ^= byte
    return bytes(out)


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
    write_new(
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
