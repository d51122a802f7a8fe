"""Over SSH the TUI refuses what the policy keeps to the console when the key is pressed: no form,
no approval dialog, nobody types a code (the gate would refuse it too)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from kmtui.core.control.operations import OpKind
from kmtui.core.models import KeyState, iso, utcnow
from kmtui.service import Workstation
from kmtui.ui.screens.main import MainScreen
from tests.conftest import SoftHsm, Team, sealed_edit
from tests.ui.helpers import SIZE, app_for, keys_loaded, main_ready, until

OVER_SSH = "203.0.113.9 50000 192.0.2.1 22"


def refusals(ws: Workstation) -> list[tuple[str, str]]:
    """(action, via) of every refused event, oldest first."""
    return [
        (e.action, e.params["via"])
        for e in ws.audit.events(limit=50)[::-1]
        if e.outcome == "refused"
    ]


def _watched(app: object) -> list[str]:
    """Every notification the app shows, as text."""
    seen: list[str] = []
    notify = app.notify  # type: ignore[attr-defined]
    app.notify = lambda message, **kw: (seen.append(str(message)), notify(message, **kw))[1]  # type: ignore[attr-defined]
    return seen


async def test_destroy_over_ssh_is_refused_on_the_key_press_without_an_approval_dialog(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = team.ws
    key = ws.create_key(label="far", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    ws.run(ws.prepare(OpKind.KEY_SCHEDULE_DESTROY, key.id), team.codes("alice", "bob"))
    past = iso(utcnow() - timedelta(days=1))
    sealed_edit(
        ws, f"key:{key.id}", "UPDATE keys SET destroy_after = ? WHERE id = ?", (past, key.id)
    )
    app = app_for(ws, tmp_path, softhsm_token.halves)
    seen = _watched(app)
    monkeypatch.setenv("SSH_CONNECTION", OVER_SSH)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("D")
        await until(pilot, lambda: any("only at the workstation console" in s for s in seen))
        await pilot.pause(0.2)
        assert isinstance(app.screen, MainScreen)
    assert ws.get_key(key.id).state == KeyState.DESTROY_SCHEDULED
    assert refusals(ws) == [("key.destroy", "ssh")]


async def test_enrolment_over_ssh_is_refused_before_its_form_opens(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    seen = _watched(app)
    monkeypatch.setenv("SSH_CONNECTION", OVER_SSH)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("4")
        await pilot.pause()
        await pilot.press("n")
        await until(pilot, lambda: any("only at the workstation console" in s for s in seen))
        await pilot.pause(0.2)
        assert isinstance(app.screen, MainScreen)
    assert refusals(team.ws) == [("operator.enroll", "ssh")]
