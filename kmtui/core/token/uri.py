"""PKCS#11 URIs (RFC 7512) naming one key version's objects on its token."""

from __future__ import annotations

from urllib.parse import quote, unquote

_SAFE = "-._~"  # RFC 3986 unreserved characters are the only ones left unencoded


def _pct(value: str | bytes) -> str:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return quote(raw, safe=_SAFE)


def build(*, token: str, serial: str, cka_id: bytes, label: str = "", object_type: str = "") -> str:
    parts = [f"token={_pct(token)}", f"serial={_pct(serial)}", f"id={_pct(cka_id)}"]
    if label:
        parts.append(f"object={_pct(label)}")
    if object_type:
        parts.append(f"type={object_type}")
    return "pkcs11:" + ";".join(parts)


def parse(uri: str) -> dict[str, bytes]:
    """The path attributes of a pkcs11: URI, percent-decoded to bytes."""
    if not uri.startswith("pkcs11:"):
        raise ValueError("not a pkcs11: URI")
    path = uri[len("pkcs11:") :].split("?", 1)[0]
    out: dict[str, bytes] = {}
    for part in filter(None, path.split(";")):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"malformed attribute {part!r}")
        out[name] = unquote(value, encoding="latin-1").encode("latin-1")
    return out
