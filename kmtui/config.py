"""Settings from config.toml: which PKCS#11 module and token, how to log in to it, the theme,
the idle lock."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmtui.core.control.pin import LOGIN_MODES, MIN_HALF_LENGTH, SPLIT, check_minimum
from kmtui.core.errors import ConfigError

DEFAULT_IDLE_LOCK_MINUTES = 15
UI_STATE = "ui-state.toml"

EXAMPLE = """\
# kmtui configuration. Name the token by label or serial, never by slot number:
# slot numbers change when tokens are added or re-initialised.

[token]
module = "/usr/lib/softhsm/libsofthsm2.so"   # the vendor's PKCS#11 library
label = "kmtui"                              # or: serial = "0123456789abcdef"
# softhsm2_conf = "/etc/softhsm/softhsm2.conf"  # SoftHSM2 only
login = "split"            # two custodians type PIN halves; "protected-path": the HSM's own
                           # PIN pad / PED / quorum log-in (Luna PED, nShield OCS, CloudHSM)
pin_half_min_length = 8    # never under 8
# accept_wrappable_keys = true  # ONLY for a token whose profile (`kmtui token info`) says it
                                # wraps keys marked non-extractable (NSS softokn): kmtui then
                                # makes such keys, and every screen says they are not protected

[ui]
theme = "kmtui-dark"
idle_lock_minutes = 15
"""


@dataclass(frozen=True)
class TokenConfig:
    module: str = ""
    label: str = ""
    serial: str = ""
    softhsm2_conf: str = ""
    login: str = SPLIT
    pin_half_min_length: int = MIN_HALF_LENGTH
    accept_wrappable_keys: bool = False
    """The custodians' acknowledgement that this token wraps keys marked non-extractable."""


@dataclass(frozen=True)
class UiConfig:
    theme: str = "kmtui-dark"
    idle_lock_minutes: int = DEFAULT_IDLE_LOCK_MINUTES
    bindings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    token: TokenConfig = field(default_factory=TokenConfig)
    ui: UiConfig = field(default_factory=UiConfig)
    source: Path | None = None
    demo: bool = False


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: [{name}] must be a table.", "See `kmtui locate` and the README."
        )
    return value


def _str(table: dict[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, not {type(value).__name__}.")
    return value


def load(path: Path, *, demo: bool = False) -> Config:
    """Read config.toml; a missing file gives the defaults, a broken one a ConfigError."""
    if not path.exists():
        return Config(source=None, demo=demo)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}.", "Fix the file or move it away."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from None

    tok = _table(data, "token", path)
    ui = _table(data, "ui", path)
    where = f"{path} [token]"
    login = _str(tok, "login", where) or SPLIT
    if login not in LOGIN_MODES:
        raise ConfigError(
            f"{where}: login must be one of {', '.join(map(repr, LOGIN_MODES))}.",
            '"split": two custodians type PIN halves; "protected-path": the HSM\'s own log-in.',
        )
    try:
        minimum = check_minimum(tok.get("pin_half_min_length", MIN_HALF_LENGTH))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", exc.hint) from None
    accept = tok.get("accept_wrappable_keys", False)
    if not isinstance(accept, bool):
        raise ConfigError(f"{where}: accept_wrappable_keys must be true or false.")
    token = TokenConfig(
        accept_wrappable_keys=accept,
        module=_str(tok, "module", where),
        label=_str(tok, "label", where),
        serial=_str(tok, "serial", where),
        softhsm2_conf=_str(tok, "softhsm2_conf", where),
        login=login,
        pin_half_min_length=minimum,
    )
    if "slot" in tok:
        raise ConfigError(
            f"{where}: tokens are chosen by label or serial, not slot.",
            'Replace `slot = ...` with `label = "..."` (see `kmtui locate`).',
        )
    minutes = ui.get("idle_lock_minutes", DEFAULT_IDLE_LOCK_MINUTES)
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 240:
        raise ConfigError(f"{path} [ui]: idle_lock_minutes must be a whole number from 1 to 240.")
    bindings = _table(ui, "bindings", path) if "bindings" in ui else {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in bindings.items()):
        raise ConfigError(f"{path} [ui.bindings]: each binding id maps to a key string.")
    return Config(
        token=token,
        ui=UiConfig(
            theme=_str(ui, "theme", f"{path} [ui]") or "kmtui-dark",
            idle_lock_minutes=minutes,
            bindings=dict(bindings),
        ),
        source=path,
        demo=demo,
    )


def remembered_theme(state_dir: Path) -> str:
    """The theme last chosen at run time ('' when none was): it wins over the config file."""
    try:
        data = tomllib.loads((state_dir / UI_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    theme = data.get("theme", "")
    return theme if isinstance(theme, str) else ""


def remember_theme(state_dir: Path, name: str) -> None:
    """Keep the run-time theme choice for the next start (a state file, not the config)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    (state_dir / UI_STATE).write_text(f'theme = "{escaped}"\n', encoding="utf-8")


def write(path: Path, token: TokenConfig, ui: UiConfig | None = None) -> None:
    """Write a config.toml (used by the demo); values are quoted as TOML basic strings."""
    ui = ui or UiConfig()

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[token]", f"module = {q(token.module)}"]
    if token.label:
        lines.append(f"label = {q(token.label)}")
    if token.serial:
        lines.append(f"serial = {q(token.serial)}")
    if token.softhsm2_conf:
        lines.append(f"softhsm2_conf = {q(token.softhsm2_conf)}")
    if token.login != SPLIT:
        lines.append(f"login = {q(token.login)}")
    if token.pin_half_min_length != MIN_HALF_LENGTH:
        lines.append(f"pin_half_min_length = {token.pin_half_min_length}")
    lines += [
        "",
        "[ui]",
        f"theme = {q(ui.theme)}",
        f"idle_lock_minutes = {ui.idle_lock_minutes}",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
