"""The demo workstation: a SoftHSM2 token of its own, a database and a few keys, under the data dir.

Demo only: both halves of the token's user PIN, and both halves of its SO PIN, are kept in files
inside the demo home so `kmtui demo` can log straight in. On a real workstation two custodians each
keep one half in their head or their envelope, and kmtui never stores either.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyotp

from kmtui import config, paths
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.control.pin import PinHalves, parse_lines
from kmtui.core.control.totp import current_code
from kmtui.core.errors import HsmError, UsageError
from kmtui.core.token import softhsm
from kmtui.core.token.session import default_softhsm_module

DEMO_TOKEN = "kmtui-demo"
DEMO_ACTOR = "demo-setup"
_MARKER = "demo.json"
HALVES_FILE = "demo-pin-halves"
SO_HALVES_FILE = "demo-so-pin-halves"
DEMO_HALF_HOLDERS = ("alice", "bob")
DEMO_SO_HALF_HOLDERS = ("carol", "bob")
_SEEDS_FILE = "demo-operators.json"
DEMO_OPERATORS = (("alice", "custodian"), ("bob", "custodian"), ("carol", "officer"))
_SEED_HISTORY = 3600  # set-up approvals use codes from the past hour, so none blocks a live one

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


def halves_of(p: paths.Paths) -> PinHalves:
    """Both halves of the demo token's user PIN (only ever for a demo home)."""
    return _halves(p, HALVES_FILE)


def so_halves_of(p: paths.Paths) -> PinHalves:
    """Both halves of the demo token's SO PIN (demo only: real SO custodians type theirs)."""
    return _halves(p, SO_HALVES_FILE)


def _halves(p: paths.Paths, name: str) -> PinHalves:
    try:
        text = (p.data_dir / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"The demo workstation at {p.home} was made before PIN halves.",
            "Run `kmtui demo --reset` to make it again.",
        ) from None
    return PinHalves.of(parse_lines(text))


def _new_halves(holders: tuple[str, str]) -> tuple[PinHalves, str]:
    """Two random halves for the demo, and their `NAME HALF` lines for its file."""
    pairs = [(holder, secrets.token_hex(8)) for holder in holders]
    return PinHalves.of(pairs), "\n".join(f"{holder} {half}" for holder, half in pairs)


def _write_secret(path: Path, value: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(value + "\n", encoding="utf-8")


@contextmanager
def _setting_up(home: Path) -> Iterator[None]:
    """One set-up at a time: a second `kmtui demo` started meanwhile waits, then finds it made
    (two at once made two tokens with one label, and both failed)."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with (home.parent / f".{home.name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(base: paths.Paths, *, reset: bool = False) -> paths.Paths:
    """Create the demo workstation on first use (or after --reset); return its paths."""
    p = home_of(base)
    assert p.home is not None
    with _setting_up(p.home):
        return _ensure(p, reset)


def _ensure(p: paths.Paths, reset: bool) -> paths.Paths:
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
    _, lines = _new_halves(DEMO_HALF_HOLDERS)
    so_halves, so_lines = _new_halves(DEMO_SO_HALF_HOLDERS)
    initial = secrets.token_hex(8)  # replaced by the halves at once, as `kmtui init` does
    serial = softhsm.init_token(module, conf, DEMO_TOKEN, so_halves.pin(), initial)
    _write_secret(p.data_dir / HALVES_FILE, lines)
    _write_secret(p.data_dir / SO_HALVES_FILE, so_lines)
    config.write(
        p.config_file,
        config.TokenConfig(module=module, label=DEMO_TOKEN, softhsm2_conf=str(conf)),
    )
    _seed(p, initial)
    (p.data_dir / _MARKER).write_text(
        json.dumps({"token": DEMO_TOKEN, "serial": serial, "module": module}), encoding="utf-8"
    )
    return p


def seeds_of(p: paths.Paths) -> dict[str, dict[str, str]]:
    """The demo operators' TOTP seeds: the demo's stand-in for their phones (demo only)."""
    if not is_demo(p):
        raise UsageError(
            "Demo codes exist only on the demo workstation.",
            "Run `kmtui demo` first; real operators read codes from their phones.",
        )
    data: dict[str, dict[str, str]] = json.loads(
        (p.data_dir / _SEEDS_FILE).read_text(encoding="utf-8")
    )
    return data


def codes(p: paths.Paths, at: float | None = None) -> list[dict[str, str]]:
    """Each demo operator's current code, as their authenticator app would show it."""
    now = time.time() if at is None else at
    return [
        {"operator": name, "role": entry["role"], "code": current_code(entry["seed"], now)}
        for name, entry in seeds_of(p).items()
    ]


class _PastClock:
    """Set-up approvals use codes from an hour ago, one step apart: none blocks a live code."""

    def __init__(self) -> None:
        self.now = time.time() - _SEED_HISTORY

    def __call__(self) -> float:
        return self.now

    def tick(self) -> float:
        self.now += 30
        return self.now


def _seed(p: paths.Paths, initial_pin: str) -> None:
    from kmtui.core.registry.db import Store
    from kmtui.launch import hsm_for
    from kmtui.service import Workstation

    clock = _PastClock()
    cfg = config.load(p.config_file, demo=True)
    store = Store.open(p.database)
    ws = Workstation.assemble(hsm_for(cfg, p), store, demo=True, clock=clock)
    seeds: dict[str, dict[str, str]] = {}

    def approvals(*names: str) -> list[ApprovalInput]:
        at = clock.tick()
        return [ApprovalInput(n, current_code(seeds[n]["seed"], at)) for n in names]

    try:
        ws.set_user_pin(initial_pin, halves_of(p), actor=DEMO_ACTOR)
        ws.login(halves_of(p), actor=DEMO_ACTOR)
        for name, role in DEMO_OPERATORS:
            prepared = ws.prepare_operator(OpKind.OPERATOR_ENROLL, name, role)
            given = [] if not prepared.quorum else approvals("alice", "bob")
            _, enrollment = ws.run_operator(prepared, given, actor=DEMO_ACTOR)
            assert enrollment is not None
            seeds[name] = {"role": role, "seed": pyotp.parse_uri(enrollment.otpauth_uri).secret}
            ws.confirm_operator(name, current_code(seeds[name]["seed"], clock.tick()))
        pairs = (("alice", "bob"), ("bob", "carol"), ("alice", "carol"))
        for n, (label, algorithm, purpose) in enumerate(DEMO_KEYS):
            ws.create_key(
                label=label,
                algorithm=algorithm,
                purpose=purpose,
                approvals=approvals(*pairs[n % len(pairs)]),
                actor=DEMO_ACTOR,
            )
        ws.logout(actor=DEMO_ACTOR, reason="demo set-up finished")
    finally:
        ws.close()
    _write_secret(p.data_dir / _SEEDS_FILE, json.dumps(seeds, indent=2))
