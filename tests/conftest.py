"""A real SoftHSM2 token per test run, in a temp dir; nothing here stands in for the HSM."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest

from kmtui.core.control.dualcontrol import current_code
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.registry.store import Store
from kmtui.core.token import softhsm
from kmtui.core.token.hsm import Hsm, default_softhsm_module
from kmtui.service import Workstation


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path
    label: str
    login_label: str
    pin: str
    so_pin: str
    serial: str


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """Two fresh tokens: one shared by the suite, one for login tests (login is per process)."""
    module = default_softhsm_module()
    if not Path(module).exists():
        pytest.fail(f"SoftHSM2 module not found at {module}: run `make test`, which installs it.")
    directory = tmp_path_factory.mktemp("softhsm")
    conf = softhsm.write_conf(directory)
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
    serial = softhsm.init_token(module, conf, "kmtui-test", so_pin, pin)
    softhsm.init_token(module, conf, "kmtui-login", so_pin, pin)
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return SoftHsm(module, conf, "kmtui-test", "kmtui-login", pin, so_pin, serial)


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


@pytest.fixture
def hsm(shared_hsm: Hsm, softhsm_token: SoftHsm) -> Hsm:
    """The suite's token, logged in again if an earlier test (or app) logged out."""
    if not shared_hsm.logged_in:
        shared_hsm.login(softhsm_token.pin)
    return shared_hsm


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
