"""The real tokens the suite runs on, chosen by KMTUI_TEST_TOKEN (softhsm, the default, or nss).

SoftHSM2 tokens live in a softhsm2.conf of the test run's temp dir. NSS softokn is reached the
way a site reaches it, through p11-kit-proxy: each token is an NSS database in the temp dir,
all named to p11-kit in one module file (each password is the user PIN; NSS has no security
officer), so one run at a time per machine.
p11-kit reads module files from /etc/pkcs11/modules when running as root (it ignores a user's own
configuration then) and from ~/.config/pkcs11/modules otherwise; the files are named after the
run, removed when it ends, and any left by a killed run are removed by the next.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kmtui.core.token import softhsm
from kmtui.core.token.session import default_softhsm_module

KINDS = ("softhsm", "nss")
KIND = os.environ.get("KMTUI_TEST_TOKEN", "softhsm").strip().lower() or "softhsm"
NSS_SERIAL = "0000000000000000"
"""The serial NSS softokn gives every token."""
_PROXIES = ("/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so", "/usr/lib64/p11-kit-proxy.so")
_SOFTOKNS = (
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
)
_PREFIX = "kmtui-test-"

LACKS: dict[str, dict[str, str]] = {
    "softhsm": {},
    "nss": {
        "so_login": "NSS softokn has no security officer (no CKU_SO log-in)",
        "init_token": "NSS tokens are databases made before the run, not C_InitToken at run time",
        "softhsm": "the test drives SoftHSM2 itself (its files, its configuration, its demo)",
    },
}
"""What each test token cannot do beyond what its probed profile says (`needs` markers)."""
CAPABILITIES = frozenset(name for lacks in LACKS.values() for name in lacks)


@dataclass(frozen=True)
class Provisioned:
    kind: str
    module: str
    softhsm2_conf: str
    """The SoftHSM2 configuration ('' for NSS)."""
    serials: dict[str, str]
    """Each token's serial, by label."""


def provision(directory: Path, labels: list[str], so_pin: str, pin: str) -> Provisioned:
    if KIND not in KINDS:
        raise RuntimeError(f"KMTUI_TEST_TOKEN={KIND!r}: choose one of {', '.join(KINDS)}")
    if KIND == "nss":
        return _nss(directory, labels, pin)
    module = default_softhsm_module()
    if not Path(module).exists():
        raise RuntimeError(f"SoftHSM2 not found at {module}: run `make test`, which installs it.")
    conf = softhsm.write_conf(directory)
    serials = {label: softhsm.init_token(module, conf, label, so_pin, pin) for label in labels}
    return Provisioned("softhsm", module, str(conf), serials)


def _first(paths: tuple[str, ...], what: str) -> str:
    found = next((p for p in paths if Path(p).exists()), "")
    if not found:
        raise RuntimeError(f"{what} not found: run `make test-nss`, which installs it.")
    return found


def modules_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/etc/pkcs11/modules")
    return Path.home() / ".config" / "pkcs11" / "modules"


def _nss(directory: Path, labels: list[str], pin: str) -> Provisioned:
    proxy = _first(_PROXIES, "p11-kit-proxy (package p11-kit-modules)")
    softokn = _first(_SOFTOKNS, "NSS softokn (package libnss3)")
    if shutil.which("certutil") is None:
        raise RuntimeError("certutil not found (package libnss3-tools): run `make test-nss`.")
    target = modules_dir()
    target.mkdir(parents=True, exist_ok=True)
    clear_stale(target)
    password = directory / "password"
    password.write_text(pin + "\n", encoding="utf-8")
    password.chmod(0o600)
    slots = []
    for number, label in enumerate(labels, start=4):  # NSS numbers its own slots from 4
        db = directory / label
        db.mkdir(mode=0o700)
        subprocess.run(
            ["certutil", "-N", "-d", f"sql:{db}", "-f", str(password)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        slots.append(f"0x{number:x}=[configdir='sql:{db}' tokenDescription='{label}' flags=]")
    # One module file for all the tokens: p11-kit loads a library once, whatever its files say.
    module_file = target / f"{_PREFIX}{os.getpid()}.module"
    module_file.write_text(
        f"module: {softokn}\n"
        f"x-init-reserved: configdir='sql:{directory / labels[0]}' certPrefix='' keyPrefix='' "
        f"secmod='secmod.db' flags= tokens=<{' '.join(slots)}>\n"
        "critical: no\n",
        encoding="utf-8",
    )
    atexit.register(module_file.unlink, missing_ok=True)
    password.unlink()
    return Provisioned("nss", proxy, "", dict.fromkeys(labels, NSS_SERIAL))


def clear_stale(target: Path) -> None:
    """Remove module files of earlier runs whose databases are gone (a killed run)."""
    for old in target.glob(f"{_PREFIX}*.module"):
        text = old.read_text(encoding="utf-8", errors="replace")
        found = re.search(r"configdir='sql:([^']+)'", text)
        if found is None or not Path(found.group(1)).exists():
            old.unlink(missing_ok=True)
