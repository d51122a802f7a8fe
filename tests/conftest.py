"""Real tokens per test run, in a temp dir: SoftHSM2, or NSS softokn through p11-kit-proxy with
KMTUI_TEST_TOKEN=nss (tests/tokens.py); nothing here stands in for the HSM."""

from __future__ import annotations

import ctypes
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
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
from kmtui.core.token.profile import TokenProfile
from kmtui.core.token.session import Hsm
from kmtui.core.token.signer import PIN_KEY_ID, PIN_LABEL
from kmtui.service import Workstation
from tests import origin_tree, tokens

Pairs = tuple[tuple[str, str], tuple[str, str]]


@dataclass(frozen=True)
class SoftHsm:
    """The suite's tokens (SoftHSM2's, or NSS softokn's: `kind`)."""

    module: str
    conf: str
    """SoftHSM2's configuration file ('' for NSS)."""
    label: str
    login_label: str
    pristine_label: str
    pairs: Pairs
    """(holder, half) of the user PIN: alice holds the first half, bob the second."""
    so_pairs: Pairs
    """(holder, half) of the SO PIN: carol holds the first half, bob the second."""
    serial: str
    kind: str = "softhsm"

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
    and one no kmtui process has touched, for attacks planted before first use (a module sees
    only the tokens that existed when it was loaded)."""
    pairs, so_pairs = new_pairs("alice", "bob"), new_pairs("carol", "bob")
    pin, so_pin = PinHalves.of(pairs).pin(), PinHalves.of(so_pairs).pin()
    labels = ["kmtui-test", "kmtui-login", "kmtui-pristine"]
    try:
        made = tokens.provision(tmp_path_factory.mktemp(tokens.KIND), labels, so_pin, pin)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"No {tokens.KIND} tokens for the suite: {exc}")
    if made.softhsm2_conf:
        os.environ["SOFTHSM2_CONF"] = made.softhsm2_conf
    return SoftHsm(
        made.module,
        made.softhsm2_conf,
        *labels,
        pairs,
        so_pairs,
        made.serials[labels[0]],
        made.kind,
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
        softhsm2_conf=softhsm_token.conf,
        accept_wrappable_keys=softhsm_token.kind == "nss",
    )
    token.login(softhsm_token.pin)
    yield token
    token.close()


def unpin(hsm: Hsm) -> None:
    """Forget which registry the suite's shared token serves, as a fresh token would: each test
    brings its own registry to the one token (a workstation's token serves one registry)."""

    def run(session: Any) -> None:
        for query in (
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: PIN_LABEL},
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.ID: PIN_KEY_ID},  # NSS's pin
        ):
            for obj in list(session.get_objects(query)):
                obj.destroy()

    hsm.call(run)


@pytest.fixture(autouse=True)
def token_capabilities(request: pytest.FixtureRequest) -> None:
    """Skip, saying why, a test marked `needs(...)` a capability this run's token lacks: one
    its probed profile says it lacks (a TokenProfile field), or one of `tokens.LACKS`."""
    marker = request.node.get_closest_marker("needs")
    if marker is None:
        return
    lacking = tokens.LACKS.get(tokens.KIND, {})
    for capability in marker.args:
        if capability in lacking:
            pytest.skip(f"{tokens.KIND} token: {lacking[capability]}")
        probed = {f.name for f in fields(TokenProfile)} | {
            name for name, value in vars(TokenProfile).items() if isinstance(value, property)
        }
        if capability in probed:
            profile = request.getfixturevalue("shared_hsm").profile
            if not getattr(profile, capability):
                pytest.skip(f"{tokens.KIND} token lacks {capability} (its probed profile)")
        elif capability not in tokens.CAPABILITIES:
            pytest.fail(f"needs({capability!r}): no such capability")


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
