"""CKA_UNWRAP_TEMPLATE through python-pkcs11, which packs only flat attribute values.

An attribute array is a CK_ATTRIBUTE[] whose entries point at their values. python-pkcs11 copies
the bytes a handler returns into its own buffer before the call, so those bytes hold pointers into
buffers kept alive here for the life of the process; the templates kmtui sends are few and fixed,
so each is packed once. An array is never read back: the second C_GetAttributeValue python-pkcs11
makes would hand the token pointers it never set. What a key-encryption key's unwrap template does
is observed instead (`Wrapping.refuses_clear_unwrap`).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Mapping
from typing import Any

from pkcs11 import Attribute
from pkcs11.attributes import AttributeMapper


class _CkAttribute(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_ulong),
        ("pValue", ctypes.c_void_p),
        ("ulValueLen", ctypes.c_ulong),
    ]


_FLAT = AttributeMapper()
_PACKED: dict[tuple[tuple[int, bytes], ...], tuple[bytes, list[Any]]] = {}
_LOCK = threading.Lock()


def pack_array(template: Mapping[Attribute, Any]) -> bytes:
    """The CK_ATTRIBUTE[] for `template`, its values in buffers that outlive every call."""
    items = tuple(
        (int(attr), _FLAT.pack_attribute(attr, value)) for attr, value in template.items()
    )
    with _LOCK:
        if items not in _PACKED:
            buffers = [ctypes.create_string_buffer(value, len(value)) for _, value in items]
            array = (_CkAttribute * len(items))()
            for entry, (kind, value), buffer in zip(array, items, buffers, strict=True):
                entry.type = kind
                entry.pValue = ctypes.addressof(buffer)
                entry.ulValueLen = len(value)
            packed = ctypes.string_at(ctypes.addressof(array), ctypes.sizeof(array))
            _PACKED[items] = (packed, [array, *buffers])
        return _PACKED[items][0]


def _never_read(_raw: bytes) -> Any:
    raise NotImplementedError("kmtui never reads an attribute array back from the token")


def register(mapper: AttributeMapper) -> AttributeMapper:
    """Teach `mapper` to send CKA_UNWRAP_TEMPLATE (a dict of flat attributes)."""
    mapper.register_handler(Attribute.UNWRAP_TEMPLATE, pack_array, _never_read)
    return mapper
