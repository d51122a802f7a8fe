"""A real SoftHSM2 token per test run, in a temp dir; nothing here stands in for the HSM."""

from __future__ import annotations

import ctypes
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pkcs11
import pyotp
import pytest
from pkcs11 import Attribute, ObjectClass

from kmtui.core.control import origin
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.control.totp import current_code
from kmtui.core.registry.db import Store
from kmtui.core.token import softhsm
from kmtui.core.token.session import Hsm, default_softhsm_module
from kmtui.core.token.signer import PIN_LABEL
from kmtui.service import Workstation
from tests import origin_tree

Pairs = tuple[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path
    label: str
    login_label: str
    pristine_label: str
    pairs: Pairs
    """(holder, half) of the user PIN: alice holds the first half, bob the second."""
    so_pairs: Pairs
    """(holder, half) of the SO PIN: carol holds the first half, bob the second."""
    serial: str

    @property
    def halves(self) -> PinHalves:
        return PinHalves.of(self.pairs)

    @property
    def so_halves(self) -> PinHalves:
        return PinHalves.of(self.so_pairs)

    @property
    def pin(self) -> str:
        """The whole user PIN, for tests of the token room, which sits below the halves."""
        return self.halves.pin()

    @property
    def so_pin(self) -> str:
        return self.so_halves.pin()


def new_pairs(first: str, second: str) -> Pairs:
    return ((first, secrets.token_hex(6)), (second, secrets.token_hex(6)))


@pytest.fixture(scope="session")
def console_roots(tmp_path_factory: pytest.TempPathFactory) -> origin.Roots:
    return origin_tree.console(tmp_path_factory.mktemp("console"), os.getpid())


@pytest.fixture(autouse=True)
def at_the_console(console_roots: origin.Roots, monkeypatch: pytest.MonkeyPatch) -> None:
    """kmtui in this process sits at a stand-in console, wherever the suite runs (over SSH it
    would rightly refuse what the console alone may do); a test that sets SSH_CONNECTION or its
    own roots is somewhere else."""
    monkeypatch.setattr(origin, "ROOTS", console_roots)
    for name in origin.SSH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """Three fresh tokens: one shared by the suite, one for login tests (login is per process),
    and one no kmtui process has touched, for attacks planted before first use (SoftHSM sees only
    the tokens that existed when the module was loaded)."""
    module = default_softhsm_module()
    if not Path(module).exists():
        pytest.fail(f"SoftHSM2 module not found at {module}: run `make test`, which installs it.")
    directory = tmp_path_factory.mktemp("softhsm")
    conf = softhsm.write_conf(directory)
    pairs, so_pairs = new_pairs("alice", "bob"), new_pairs("carol", "bob")
    pin, so_pin = PinHalves.of(pairs).pin(), PinHalves.of(so_pairs).pin()
    serial = softhsm.init_token(module, conf, "kmtui-test", so_pin, pin)
    softhsm.init_token(module, conf, "kmtui-login", so_pin, pin)
    softhsm.init_token(module, conf, "kmtui-pristine", so_pin, pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return SoftHsm(
        module, conf, "kmtui-test", "kmtui-login", "kmtui-pristine", pairs, so_pairs, serial
    )


def init_token_in_process(module: str, label: str, so_pin: str, user_pin: str) -> None:
    """C_InitToken on a free slot through the already loaded module (on the PKCS#11 thread).

    SoftHSM reads its token directory once, at C_Initialize: a token that a child process makes
    later stays invisible to this process, so the token is made in-process instead.
    """
    lib = pkcs11.lib(module)
    free = next(
        slot.slot_id
        for slot in lib.get_slots(token_present=True)
        if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED
    )
    cdll = ctypes.CDLL(module)
    cdll.C_InitToken.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    cdll.C_InitToken.restype = ctypes.c_ulong
    so = so_pin.encode()
    rv = cdll.C_InitToken(free, so, len(so), label.encode().ljust(32, b" "))
    assert rv == 0, f"C_InitToken returned CKR 0x{rv:x}"
    with lib.get_token(token_label=label).open(rw=True, so_pin=so_pin) as session:
        session.init_pin(user_pin)


@pytest.fixture(scope="session")
def shared_hsm(softhsm_token: SoftHsm) -> Iterator[Hsm]:
    token = Hsm(
        softhsm_token.module,
        token_label=softhsm_token.label,
        softhsm2_conf=str(softhsm_token.conf),
    )
    token.login(softhsm_token.pin)
    yield token
    token.close()


def unpin(hsm: Hsm) -> None:
    """Forget which registry the suite's shared token serves, as a fresh token would: each test
    brings its own registry to the one token (a workstation's token serves one registry)."""

    def run(session: Any) -> None:
        query = {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: PIN_LABEL}
        for obj in list(session.get_objects(query)):
            obj.destroy()

    hsm.call(run)


@pytest.fixture
def hsm(shared_hsm: Hsm, softhsm_token: SoftHsm) -> Hsm:
    """The suite's token, logged in again if an earlier test (or app) logged out, and serving
    no registry yet (each test brings its own)."""
    if not shared_hsm.logged_in:
        shared_hsm.login(softhsm_token.pin)
    unpin(shared_hsm)
    return shared_hsm


def sealed_edit(ws: Workstation, subject: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """A registry edit sealed by kmtui on the logged-in token, as an authorised change would be:
    for tests that move a date kmtui takes from real time (a waiting period) or plant odd values.
    An edit made without this is what kmtui refuses as REGISTRY CHANGED OUTSIDE KMTUI."""
    ws.seals.write(lambda: ws.store.conn.execute(sql, params), "test.edit", subject, actor="test")


class Clock:
    """An injected clock for TOTP: each approval round moves it one 30-second step on."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 30) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def workstation(hsm: Hsm, tmp_path: Path, clock: Clock) -> Iterator[Workstation]:
    """The suite's token with a fresh registry (no operators yet)."""
    store = Store.open(tmp_path / "kmtui.db")
    yield Workstation.assemble(hsm, store, clock=clock)
    store.close()


@dataclass
class Team:
    """Enrolled operators whose authenticators the test holds (their seeds)."""

    ws: Workstation
    clock: Clock
    seeds: dict[str, str]

    def codes(self, *names: str) -> list[ApprovalInput]:
        """Fresh codes from each named operator's authenticator, one step later than before."""
        self.clock.advance(30)
        return [ApprovalInput(n, current_code(self.seeds[n], self.clock())) for n in names]

    def enroll(self, name: str, role: str, approvers: tuple[str, ...] = ()) -> None:
        prepared = self.ws.prepare_operator(OpKind.OPERATOR_ENROLL, name, role)
        _, enrollment = self.ws.run_operator(prepared, self.codes(*approvers) if approvers else ())
        assert enrollment is not None
        self.seeds[name] = pyotp.parse_uri(enrollment.otpauth_uri).secret
        self.clock.advance(30)
        self.ws.confirm_operator(name, current_code(self.seeds[name], self.clock()))


@pytest.fixture
def team(workstation: Workstation, clock: Clock) -> Team:
    """alice and bob (custodians, the bootstrap pair) and carol (officer, approved by them)."""
    crew = Team(workstation, clock, {})
    crew.enroll("alice", "custodian")
    crew.enroll("bob", "custodian")
    crew.enroll("carol", "officer", ("alice", "bob"))
    return crew


_SUMMARIES = pytest.StashKey[dict[str, list[str]]]()


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> Callable[[str, list[str]], None]:
    """Lines a test wants shown at the end of the run (coverage tables), under a title."""
    store = request.config.stash.setdefault(_SUMMARIES, {})

    def add(title: str, lines: list[str]) -> None:
        store[title] = lines

    return add


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for title, lines in config.stash.get(_SUMMARIES, {}).items():
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """KMTUI_FAST=1 skips the suites marked slow (CI runs everything)."""
    if os.environ.get("KMTUI_FAST") != "1":
        return
    skip = pytest.mark.skip(reason="slow suite skipped because KMTUI_FAST=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
