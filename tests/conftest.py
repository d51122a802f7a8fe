"""A real SoftHSM2 token per test run, in a temp dir; nothing here stands in for the HSM."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kmtui.core import softhsm
from kmtui.core.hsm import Hsm, default_softhsm_module
from kmtui.core.service import Workstation
from kmtui.core.store import Store


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


@pytest.fixture
def workstation(hsm: Hsm, tmp_path: Path) -> Iterator[Workstation]:
    """The suite's token with a fresh registry."""
    store = Store.open(tmp_path / "kmtui.db")
    yield Workstation.assemble(hsm, store)
    store.close()
