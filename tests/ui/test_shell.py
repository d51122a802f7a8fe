"""The shell around the panes: themes from files, the command palette, mouse tabs, remapped
keys, and operators locked and unlocked through the approval dialog."""

from __future__ import annotations

from pathlib import Path

from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Button, DataTable, TabbedContent

from kmtui.config import Config, UiConfig, remember_theme, remembered_theme
from kmtui.core.control.pin import PinHalves
from kmtui.core.models import OperatorState
from kmtui.paths import Paths, under
from kmtui.service import Workstation
from kmtui.ui.app import KmtuiApp
from kmtui.ui.screens.approval import ApprovalScreen
from kmtui.ui.screens.distribution import ImportScreen
from kmtui.ui.screens.main import PANES, MainScreen
from kmtui.ui.screens.transcript import TranscriptScreen
from kmtui.ui.widgets.pane import palette_title
from tests.conftest import SoftHsm, Team
from tests.ui.helpers import SIZE, approve, keys_loaded, main_ready, until


def hits(app: KmtuiApp) -> int:
    found = app.screen.query(CommandList)
    return found.first().option_count if found else 0


def titles(app: KmtuiApp) -> list[str]:
    found = app.screen.query(CommandList)
    if not found:
        return []
    options = found.first()
    return [options.get_option_at_index(i).hit.text for i in range(options.option_count)]


async def run_from_palette(pilot: Pilot[int], typed: str) -> None:
    app = pilot.app
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
    await pilot.press(*typed)
    await until(pilot, lambda: hits(app), "the palette's hits")
    await pilot.pause(0.3)
    await pilot.press("enter")


def app_on(
    ws: Workstation, paths: Paths, login: PinHalves, config: Config | None = None
) -> KmtuiApp:
    return KmtuiApp(ws, config or Config(), paths=paths, login=login)


async def test_broken_theme_files_are_reported_in_one_notice_and_the_default_is_used(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    paths = under(tmp_path / "home")
    paths.user_themes_dir.mkdir(parents=True)
    (paths.user_themes_dir / "bad-colour.toml").write_text(
        'name = "bad"\nprimary = "not-a-colour"\n', encoding="utf-8"
    )
    (paths.user_themes_dir / "not-toml.toml").write_text("[[[", encoding="utf-8")
    (paths.user_themes_dir / "mine.toml").write_text(
        'name = "my-theme"\nprimary = "#2255aa"\nbackground = "#101010"\n', encoding="utf-8"
    )
    remember_theme(paths.state_dir, "gone-theme")  # chosen once, its file since removed
    app = app_on(team.ws, paths, softhsm_token.halves)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await main_ready(pilot)
        notices = [str(n.message) for n in app._notifications if "themes" in str(n.message)]
        assert len(notices) == 1
        assert "bad-colour.toml: primary is not a colour" in notices[0]
        assert "not-toml.toml" in notices[0]
        assert "'gone-theme' is not available" in notices[0]
        assert app.theme == "kmtui-dark"
        assert "my-theme" in app.available_themes  # a good user theme is offered


async def test_a_theme_chosen_in_the_palette_applies_now_and_at_the_next_start(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    paths = under(tmp_path / "home")
    app = app_on(team.ws, paths, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        await pilot.press(*"theme: kmtui-light")
        await until(pilot, lambda: hits(app), "the palette's hits")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.theme == "kmtui-light", "the light theme")
    assert remembered_theme(paths.state_dir) == "kmtui-light"
    again = app_on(team.ws, paths, softhsm_token.halves)
    async with again.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        assert again.theme == "kmtui-light"


async def test_the_palette_runs_a_pane_action_by_its_category_name(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    team.ws.create_key(label="paletted", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    app = app_on(team.ws, under(tmp_path / "home"), softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        await pilot.press(*"keys: rotate")
        await until(pilot, lambda: hits(app), "the palette's hits")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval dialog")
        assert "Rotate AES-256 key 'paletted'" in app.screen.prepared.summary


async def test_panes_open_with_the_mouse_and_a_remapped_key_runs_its_action(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    team.ws.create_key(label="remapped", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    config = Config(ui=UiConfig(bindings={"keys.rotate": "ctrl+o"}))
    app = app_on(team.ws, under(tmp_path / "home"), softhsm_token.halves, config)
    async with app.run_test(size=SIZE) as pilot:
        main = await main_ready(pilot)
        await keys_loaded(pilot, 1)
        tabs = main.query_one(TabbedContent)
        for pane in ("audit", "operators", "keys"):
            await pilot.click(f"#--content-tab-tab-{pane}")
            await until(pilot, lambda pane=pane: tabs.active == f"tab-{pane}", f"the {pane} tab")
        main.query_one("#keys", DataTable).focus()
        await pilot.press("o")  # the old key does nothing now
        await pilot.pause(0.2)
        assert isinstance(app.screen, MainScreen)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the approval dialog")


async def test_an_operator_is_locked_and_unlocked_from_the_operators_pane(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    app = app_on(ws, under(tmp_path / "home"), softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        main = await main_ready(pilot)
        await pilot.press("4")
        table = main.query_one("#operators", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the operators")
        names = [table.get_row_at(i)[0].plain for i in range(3)]
        table.focus()
        await pilot.pause(0.2)  # the pane's own first load settles before the cursor moves
        table.move_cursor(row=names.index("carol"))
        await until(pilot, lambda: table.cursor_row == names.index("carol"), "carol selected")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), "the dialog")
        assert app.screen.prepared.summary == "Lock operator 'carol'"
        await approve(pilot, team.codes("alice", "bob"))
        assert ws.operators.get("carol").state == OperatorState.LOCKED
        await until(pilot, lambda: "locked" in table.get_row_at(names.index("carol"))[2].plain)
        await pilot.press("u")
        await approve(pilot, team.codes("alice", "bob"))
        assert ws.operators.get("carol").state == OperatorState.ACTIVE
        await until(pilot, lambda: "active" in table.get_row_at(names.index("carol"))[2].plain)


async def test_every_key_of_every_pane_is_in_the_palette_and_runs_the_same_action(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    expected = set()
    for name, _, cls in PANES:
        for binding in cls.bindings():
            assert callable(getattr(cls, f"action_{binding.action}", None)), binding.action
            expected.add(f"{name}: {palette_title(binding)}")
    # What the palette lacked while it kept a list of its own, spelled out:
    assert {
        "keys: export wrapped under a trusted key…",
        "keys: import a wrapped key file…",
        "keys: generate as components…",
        "keys: enter from components…",
    } <= expected
    app = app_on(team.ws, under(tmp_path / "home"), softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        await until(pilot, lambda: expected <= set(titles(app)), "every pane's keys listed")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the palette closed")
        await run_from_palette(pilot, "keys: import a wrapped")
        await until(pilot, lambda: isinstance(app.screen, ImportScreen), "the import form")


async def test_quit_from_the_palette_goes_through_the_transcript_like_q(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    app = app_on(team.ws, under(tmp_path / "home"), softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await run_from_palette(pilot, "app: quit")
        await until(pilot, lambda: isinstance(app.screen, TranscriptScreen), "the transcript")
        assert app.is_running  # nothing ends before the custodians have the transcript
        screen = app.screen
        await until(pilot, lambda: screen.document is not None, "the signed transcript")
        screen.query_one("#quit", Button).press()
        await until(pilot, lambda: not app.is_running, "the app to exit")
