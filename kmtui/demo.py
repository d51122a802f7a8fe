"""The demo workstation: a SoftHSM2 token of its own, a database and a few keys, under the data dir.

Demo only: the token PIN is kept in a file inside the demo home so `kmtui demo` can log straight
in. A real workstation never stores its PIN.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from kmtui import config, paths
from kmtui.core import softhsm
from kmtui.core.errors import HsmError
from kmtui.core.hsm import default_softhsm_module

DEMO_TOKEN = "kmtui-demo"
DEMO_ACTOR = "demo-setup"
_MARKER = "demo.json"
_PIN_FILE = "demo-pin"

DEMO_KEYS = (
    ("payments-db-dek", "AES-256", "encrypt"),
    ("backup-kek-2026", "AES-256", "wrap"),
    ("webhook-hmac", "HMAC-SHA256", "mac"),
    ("release-signing", "EC-P256", "sign"),
    ("tls-issuing-ca", "RSA-2048", "sign"),
    ("legacy-archive", "AES-128", "encrypt"),
)


def home_of(base: paths.Paths) -> paths.Paths:
    return paths.under(base.demo_home)


def is_demo(p: paths.Paths) -> bool:
    return (p.data_dir / _MARKER).is_file()


def pin_of(p: paths.Paths) -> str:
    """The demo token's PIN (only ever for a demo home)."""
    return (p.data_dir / _PIN_FILE).read_text(encoding="utf-8").strip()


def _write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n", encoding="utf-8")


def ensure(base: paths.Paths, *, reset: bool = False) -> paths.Paths:
    """Create the demo workstation on first use (or after --reset); return its paths."""
    p = home_of(base)
    assert p.home is not None
    if p.home.exists() and (reset or not is_demo(p)):
        # A half-made demo (interrupted set-up) is started over rather than patched.
        shutil.rmtree(p.home)
    if is_demo(p):
        return p
    p.ensure()
    module = default_softhsm_module()
    if not Path(module).exists():
        raise HsmError(
            f"SoftHSM2 is not installed (no {module}).",
            "Run `make demo`, which installs it, or `apt-get install softhsm2`.",
        )
    conf = softhsm.write_conf(p.data_dir / "softhsm")
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(16)
    serial = softhsm.init_token(module, conf, DEMO_TOKEN, so_pin, pin)
    _write_secret(p.data_dir / _PIN_FILE, pin)
    _write_secret(p.data_dir / "demo-so-pin", so_pin)
    config.write(
        p.config_file,
        config.TokenConfig(module=module, label=DEMO_TOKEN, softhsm2_conf=str(conf)),
    )
    _seed(p)
    (p.data_dir / _MARKER).write_text(
        json.dumps({"token": DEMO_TOKEN, "serial": serial, "module": module}), encoding="utf-8"
    )
    return p


def _seed(p: paths.Paths) -> None:
    from kmtui.launch import open_workstation

    ws = open_workstation(p, config.load(p.config_file, demo=True))
    try:
        ws.login(pin_of(p), actor=DEMO_ACTOR)
        for label, algorithm, purpose in DEMO_KEYS:
            ws.create_key(label=label, algorithm=algorithm, purpose=purpose, actor=DEMO_ACTOR)
        ws.logout(actor=DEMO_ACTOR, reason="demo set-up finished")
    finally:
        ws.close()
