"""Provisioning SoftHSM2 tokens for the demo workstation and the tests.

A token is initialised in a child process: C_InitToken is not in python-pkcs11, and SoftHSM reads
its configuration at C_Initialize, so a fresh process keeps the caller's module state untouched.
The PINs travel to the child on stdin, never in argv or the environment.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from kmtui.core.errors import HsmError

CKF_TOKEN_INITIALIZED = 0x400
_TOKEN_INFO_SIZE = 208  # CK_TOKEN_INFO on LP64: 96 bytes of text, 10 CK_ULONGs, versions, time


def write_conf(directory: Path) -> Path:
    """A softhsm2.conf whose token store lives in `directory/tokens`."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return conf


def init_token(module: str, conf: Path, label: str, so_pin: str, user_pin: str) -> str:
    """Initialise a new token in the first free slot and set its user PIN; returns its serial."""
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    request = json.dumps({"module": module, "label": label, "so_pin": so_pin, "user_pin": user_pin})
    proc = subprocess.run(
        [sys.executable, "-m", "kmtui.core.token.softhsm"],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise HsmError(
            f"Could not initialise SoftHSM2 token {label!r}: {proc.stderr.strip()[-300:]}",
            "Check that softhsm2 is installed and the token directory is writable.",
        )
    serial: str = json.loads(proc.stdout)["serial"]
    return serial


def _rv(name: str, value: int) -> None:
    if value != 0:
        raise RuntimeError(f"{name} returned CKR 0x{value:x}")


def _child() -> None:
    request = json.loads(sys.stdin.read())
    module, label = request["module"], request["label"]
    lib = ctypes.CDLL(module)
    ulong = ctypes.c_ulong
    lib.C_InitToken.argtypes = [ulong, ctypes.c_char_p, ulong, ctypes.c_char_p]
    _rv("C_Initialize", lib.C_Initialize(None))
    count = ulong(0)
    _rv("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), None, ctypes.byref(count)))
    slots = (ulong * count.value)()
    _rv("C_GetSlotList", lib.C_GetSlotList(ctypes.c_ubyte(1), slots, ctypes.byref(count)))
    free = None
    for slot in slots[: count.value]:
        info = ctypes.create_string_buffer(_TOKEN_INFO_SIZE)
        _rv("C_GetTokenInfo", lib.C_GetTokenInfo(ulong(slot), info))
        flags = ulong.from_buffer_copy(info.raw[96:104]).value
        if not flags & CKF_TOKEN_INITIALIZED:
            free = slot
            break
    if free is None:
        raise RuntimeError("no free slot")
    so_pin = request["so_pin"].encode("utf-8")
    padded = label.encode("utf-8")[:32].ljust(32, b" ")
    _rv("C_InitToken", lib.C_InitToken(free, so_pin, len(so_pin), padded))
    _rv("C_Finalize", lib.C_Finalize(None))

    import pkcs11

    token = pkcs11.lib(module).get_token(token_label=label)
    with token.open(rw=True, so_pin=request["so_pin"]) as session:
        session.init_pin(request["user_pin"])
    print(json.dumps({"serial": token.serial.decode("ascii").strip()}))


if __name__ == "__main__":
    _child()
