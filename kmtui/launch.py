"""Assemble a workstation (token + registry + audit) from paths and configuration."""

from __future__ import annotations

from kmtui import paths
from kmtui.config import Config
from kmtui.core.errors import ConfigError
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation


def hsm_for(cfg: Config, p: paths.Paths) -> Hsm:
    if not cfg.token.module:
        raise ConfigError(
            f"No PKCS#11 module configured ({p.config_file} missing or without [token] module).",
            "Try `kmtui demo` first, or write the file: `kmtui locate --example` prints one.",
        )
    return Hsm(
        cfg.token.module,
        token_label=cfg.token.label,
        token_serial=cfg.token.serial,
        softhsm2_conf=cfg.token.softhsm2_conf,
        accept_wrappable_keys=cfg.token.accept_wrappable_keys,
    )


def open_workstation(p: paths.Paths, cfg: Config, *, integrity: str = "full") -> Workstation:
    """Open the registry first (it refuses a corrupt database), then bind the token.

    `integrity` is Store.open's: the TUI asks for "quick" and runs the full check itself in the
    background once its panes are up (kmtui.ui.screens.main).
    """
    store = Store.open(p.ensure().database, integrity=integrity)
    try:
        return Workstation.assemble(hsm_for(cfg, p), store, demo=cfg.demo)
    except BaseException:
        store.close()
        raise
