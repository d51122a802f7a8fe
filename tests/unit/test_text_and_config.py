"""Display safety, PKCS#11 URIs, paths and configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kmtui import config, paths
from kmtui.core import errors
from kmtui.core.safetext import clean, is_clean
from kmtui.core.token import uri


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[2J", "\\x1b[2J"),
        ("a\u202eb", "a\\u202eb"),
        ("\x9b31m", "\\x9b31m"),
        ("tab\there", "tab\\x09here"),
        ("[red]x[/red]", "[red]x[/red]"),
        ("ключ-2026", "ключ-2026"),
    ],
)
def test_clean_escapes_control_and_bidi_characters(raw: str, shown: str) -> None:
    assert clean(raw) == shown


@given(st.text())
def test_clean_output_never_holds_a_control_character(raw: str) -> None:
    assert is_clean(clean(raw))


def test_clean_truncates_with_an_ellipsis() -> None:
    assert clean("abcdefgh", limit=5) == "abcd…"


@given(st.binary(max_size=40), st.text(max_size=20))
def test_pkcs11_uri_round_trips_any_id_and_label(cka_id: bytes, label: str) -> None:
    built = uri.build(token="tok en;x", serial="01", cka_id=cka_id, label=label)
    parsed = uri.parse(built)
    assert parsed["id"] == cka_id
    assert parsed["token"] == b"tok en;x"
    if label:
        assert parsed["object"] == label.encode("utf-8")


def test_home_puts_every_path_under_it(tmp_path: Path) -> None:
    p = paths.resolve(tmp_path)
    for value in (p.config_file, p.database, p.state_dir, p.log_dir, p.demo_home):
        assert value.is_relative_to(tmp_path)


def test_config_round_trips_and_rejects_slot_numbers(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    config.write(target, config.TokenConfig(module="/x/lib.so", label='a "quoted" label'))
    loaded = config.load(target)
    assert loaded.token.module == "/x/lib.so"
    assert loaded.token.label == 'a "quoted" label'
    assert loaded.ui.idle_lock_minutes == config.DEFAULT_IDLE_LOCK_MINUTES
    assert (loaded.token.login, loaded.token.pin_half_min_length) == ("split", 8)
    config.write(
        target,
        config.TokenConfig(
            module="/x.so", label="t", login="protected-path", pin_half_min_length=12
        ),
    )
    loaded = config.load(target)
    assert (loaded.token.login, loaded.token.pin_half_min_length) == ("protected-path", 12)
    target.write_text('[token]\nmodule = "/x.so"\nslot = 0\n')
    with pytest.raises(errors.ConfigError, match="label or serial"):
        config.load(target)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[token\nmodule=", "not valid TOML"),
        ("[ui]\nidle_lock_minutes = 0\n", "idle_lock_minutes"),
        ("[token]\nmodule = 3\n", "must be a string"),
        ('[token]\nlogin = "pin"\n', "login must be one of 'split', 'protected-path'"),
        ("[token]\npin_half_min_length = 7\n", "from 8 to 64"),
        ('[token]\npin_half_min_length = "12"\n', "from 8 to 64"),
    ],
)
def test_broken_config_gives_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    target = tmp_path / "config.toml"
    target.write_text(text)
    with pytest.raises(errors.ConfigError, match=message):
        config.load(target)


def test_missing_config_gives_defaults(tmp_path: Path) -> None:
    loaded = config.load(tmp_path / "absent.toml")
    assert loaded.source is None and loaded.token.module == ""
