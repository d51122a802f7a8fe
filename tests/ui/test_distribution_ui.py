"""Keys that travel, from the keys pane: export, import, and components one custodian at a time."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Button, Input, Select, Static

from kmtui.core.control.pin import PinHalves
from kmtui.core.keys import components
from kmtui.core.models import Key
from kmtui.ui.screens.distribution import (
    ComponentsScreen,
    EnterComponentsScreen,
    ExportScreen,
    ImportScreen,
    RevealScreen,
)
from tests.conftest import SoftHsm, Team
from tests.ui.helpers import SIZE, app_for, approve, keys_loaded, main_ready, until


def _setup(team: Team, so_login: PinHalves) -> tuple[Key, Key]:
    prepared = team.ws.prepare_create(
        label="transport-kek", algorithm="AES-256", purpose="wrap", trusted=True
    )
    team.ws.run(prepared, team.codes("alice", "bob"), so_login=so_login)
    kek = team.ws.get_key(prepared.operation.key_id)
    dek = team.ws.create_key(
        label="app-dek",
        algorithm="AES-256",
        policy_name="exportable-dek",
        exportable=True,
        approvals=team.codes("alice", "carol"),
    )
    return kek, dek


async def test_export_then_import_from_the_keys_pane(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    kek, dek = _setup(team, softhsm_token.so_halves)
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        table = await keys_loaded(pilot, 2)
        table.move_cursor(row=table.get_row_index(dek.id))
        await pilot.press("e")
        await until(
            pilot,
            lambda: isinstance(app.screen, ExportScreen) and app.screen.query("#ok"),
            "the export form",
        )
        form = app.screen
        form.query_one("#wrapper", Select).value = kek.id
        out = Path(form.query_one("#out", Input).value)
        await pilot.click("#ok")
        await approve(pilot, team.codes("bob", "carol"))
        await until(pilot, out.exists, "the key file")
        assert json.loads(out.read_text())["manifest"]["kcv"] == dek.versions[0].kcv

        await pilot.press("i")
        await until(
            pilot,
            lambda: isinstance(app.screen, ImportScreen) and app.screen.query("#ok"),
            "the import form",
        )
        form = app.screen
        form.query_one("#path", Input).value = str(out)
        form.query_one("#kek", Select).value = kek.id
        form.query_one("#label", Input).value = "app-dek-copy"
        await pilot.click("#ok")
        await approve(pilot, team.codes("alice", "bob"))
        await keys_loaded(pilot, 3)
    (copy,) = team.ws.store.keys.find(label="app-dek-copy")
    assert copy.versions[0].kcv == dek.versions[0].kcv


async def test_components_are_revealed_one_custodian_at_a_time_and_entered_back(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("g")
        await until(
            pilot,
            lambda: isinstance(app.screen, ComponentsScreen) and app.screen.query("#ok"),
            "the form",
        )
        form = app.screen
        form.query_one("#label", Input).value = "zmk"
        form.query_one("#custodians", Input).value = "alice,bob,carol"
        await pilot.click("#ok")
        await approve(pilot, team.codes("alice", "bob"))
        await until(
            pilot,
            lambda: isinstance(app.screen, RevealScreen) and app.screen.query("#reveal"),
            "the reveal screen",
        )
        reveal = app.screen
        shares = list(reveal.shares)
        text = reveal.query_one("#reveal-text", Static)
        assert shares[0].value.hex().upper()[:4] not in str(text.render())  # hidden at first
        seen = []
        for share in shares:
            reveal.query_one("#reveal", Button).press()
            await pilot.pause()
            shown = str(text.render())
            assert components.grouped(share.value) in shown and share.kcv in shown
            assert all(components.grouped(o.value) not in shown for o in shares if o is not share)
            seen.append(share.custodian)
            reveal.query_one("#reveal", Button).press()
            await pilot.pause()
            assert components.grouped(share.value) not in str(text.render())
        reveal.query_one("#reveal", Button).press()
        await until(pilot, lambda: not isinstance(app.screen, RevealScreen), "done")
        assert seen == ["alice", "bob", "carol"]

        await pilot.press("G")
        await until(
            pilot,
            lambda: isinstance(app.screen, ComponentsScreen) and app.screen.query("#ok"),
            "the form",
        )
        form = app.screen
        form.query_one("#label", Input).value = "zmk-again"
        form.query_one("#custodians", Input).value = "alice,bob,carol"
        await pilot.click("#ok")
        await until(
            pilot,
            lambda: isinstance(app.screen, EnterComponentsScreen) and app.screen.query("#next"),
            "entry",
        )
        entry = app.screen
        for number, share in enumerate(shares, 1):
            entry.query_one("#component", Input).value = components.grouped(share.value)
            entry.query_one("#kcv", Input).value = "000000" if number == 2 else share.kcv
            entry.query_one("#next", Button).press()
            await pilot.pause()
            if number == 2:  # a typo is caught at that component, not at the end
                error = str(entry.query_one(".form-error", Static).render())
                assert "Component 2 does not match its KCV" in error
                entry.query_one("#kcv", Input).value = share.kcv
                entry.query_one("#next", Button).press()
                await pilot.pause()
        await approve(pilot, team.codes("bob", "carol"))
    original, again = (team.ws.store.keys.find(label=n)[0] for n in ("zmk", "zmk-again"))
    assert again.versions[0].kcv == original.versions[0].kcv


async def test_the_key_detail_copies_the_pkcs11_uri(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    key = team.ws.create_key(
        label="named", algorithm="AES-128", approvals=team.codes("alice", "bob")
    )
    expected = team.ws.describe(key)["versions"][0]["pkcs11_uri"]
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("enter")
        await until(pilot, lambda: getattr(app.screen, "uri", ""), "the key detail")
        await pilot.press("y")
        await until(pilot, lambda: app.clipboard == expected, "the copied URI")
