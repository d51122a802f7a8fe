"""C_Login for a session python-pkcs11 opened, from the module's CK_FUNCTION_LIST.

python-pkcs11 logs in only while opening a session, and leaks that session when the log-in
fails (it keeps no handle to close), so kmtui opens the session first and logs in on it. The
standard promises a module exports one symbol, C_GetFunctionList; the C_Login used is the entry
of the list it fills in, and only when that entry is the module's one C_Login (the list is the
module's single state: the entry is the exported C_Login). p11-kit-proxy exports nothing else
and hands out a new, uninitialised list per call; for such modules `entry` gives None and the
caller logs in through python-pkcs11's own function list instead.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

CK_RV = ctypes.c_ulong
CK_ULONG = ctypes.c_ulong

# The entries of CK_FUNCTION_LIST (PKCS#11 v2.40 section 5.16) up to C_Login, in their order.
_ENTRIES = (
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
)
_LOGIN = ctypes.CFUNCTYPE(CK_RV, CK_ULONG, CK_ULONG, ctypes.c_char_p, CK_ULONG)


class _FunctionList(ctypes.Structure):
    _fields_ = [
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        *((name, ctypes.c_void_p) for name in _ENTRIES),
    ]


_ENTRIES_FOUND: dict[str, Any] = {}
_LOCK = threading.Lock()


def entry(module: str) -> Any:
    """`module`'s C_Login from its function list (a ctypes function), or None (see above)."""
    with _LOCK:
        if module not in _ENTRIES_FOUND:
            _ENTRIES_FOUND[module] = _find(module)
        return _ENTRIES_FOUND[module]


def _find(module: str) -> Any:
    try:
        library = ctypes.CDLL(module)
        get_list = library.C_GetFunctionList
        exported = ctypes.cast(library.C_Login, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
    get_list.restype = CK_RV
    table = ctypes.POINTER(_FunctionList)()
    if int(get_list(ctypes.byref(table))) != 0 or not table:
        return None
    listed = table.contents.C_Login
    if not listed or listed != exported:
        return None
    return _LOGIN(listed)


def login(module: str, handle: int, user_type: int, pin: str) -> int | None:
    """C_Login(handle, user_type, pin) through `module`'s function list: its CK_RV, or None when
    the module offers no such entry (log in through python-pkcs11 then)."""
    login_fn = entry(module)
    if login_fn is None:
        return None
    data = pin.encode("utf-8")
    return int(login_fn(handle, user_type, data, len(data)))
