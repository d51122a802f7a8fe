"""Hostile text stays inert in every pane and dialog; a failing token never takes the app down."""

from __future__ import annotations

from pathlib import Path

from kmtui.core.errors import HsmError
from kmtui.core.models import Outcome
from kmtui.ui.screens.main import MainScreen
from tests.conftest import SoftHsm, Team, sealed_edit
from tests.ui.helpers import SIZE, app_for, keys_loaded, main_ready, until

MARKUP = "[red]x[/][/b]"
HOSTILE = MARKUP + "\x1b]52;c;aGVsbG8=\x07\x9b31m\u202eevil\x1b[2J"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def assert_inert(svg: str, where: str) -> None:
    assert MARKUP in svg, f"{where}: the markup is not shown literally"
    for ch in RAW:
        assert ch not in svg, f"{where}: {ch!r} reached the screen"


async def test_a_hostile_label_is_literal_and_inert_in_every_pane_and_dialog(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    key = ws.create_key(label="plain", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    sealed_edit(ws, f"key:{key.id}", "UPDATE keys SET label = ? WHERE id = ?", (HOSTILE, key.id))
    sealed_edit(
        ws,
        "policy:default",
        "UPDATE policies SET description = ? WHERE name = 'default'",
        (HOSTILE,),
    )
    ws.store.conn.commit()
    ws.audit.append(
        "key.note", actor="alice", outcome=Outcome.INFO, key_id=key.id, params={"label": HOSTILE}
    )
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=(140, 40)) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.pause(0.2)
        assert_inert(app.export_screenshot(), "keys pane")
        await pilot.press("enter")
        await until(pilot, lambda: "KeyDetail" in type(app.screen).__name__)
        await pilot.pause(0.5)
        assert_inert(app.export_screenshot(), "key detail")
        await pilot.press("escape")
        await pilot.press("o")
        await until(pilot, lambda: "Approval" in type(app.screen).__name__)
        await pilot.pause(0.1)
        assert_inert(app.export_screenshot(), "approval dialog")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        for pane in ("2", "3"):
            await pilot.press(pane)
            await pilot.pause(0.5)
            assert_inert(app.export_screenshot(), f"pane {pane}")


async def test_an_hsm_error_inside_a_worker_shows_a_message_and_the_app_stays_up(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path, monkeypatch
) -> None:
    ws = team.ws

    def gone() -> list[object]:
        raise HsmError("The token was removed.", "Reinsert it.")

    def broken() -> list[str]:
        raise RuntimeError("secret-looking detail")

    monkeypatch.setattr(ws.hsm.objects, "scan", gone)
    monkeypatch.setattr(ws.hsm, "mechanisms", broken)
    app = app_for(ws, tmp_path, softhsm_token.halves)
    seen: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (seen.append(str(message)), notify(message, **kw))[1]
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await until(pilot, lambda: any("Reconciliation failed" in s for s in seen))
        await until(pilot, lambda: any("internal error (RuntimeError)" in s for s in seen))
        assert not any("secret-looking" in s for s in seen)
        await pilot.press("n")  # still alive and answering keys
        await until(pilot, lambda: type(app.screen).__name__ == "CreateKeyScreen")
        await pilot.press("escape")
    assert app.return_code in (None, 0)


def test_the_audit_event_detail_neutralises_every_field_read_from_the_database() -> None:
    from kmtui.core.models import AuditEvent
    from kmtui.ui.widgets.audit_pane import describe

    event = AuditEvent(
        seq=7,
        ts="\x1b]52;c;aGk=\x1b\\X",  # a row edited by hand: 19 characters make an OSC 52
        actor="alice" + HOSTILE,
        action="key.note" + HOSTILE,
        key_id="k1",
        params={"label": HOSTILE},
        outcome="success",
        prev_hash="0" * 64,
        hash="\x1b[2J\x1b[H" + "f" * 20,
    )
    shown = describe(event, HOSTILE).plain
    for ch in RAW:
        assert ch not in shown
    assert MARKUP in shown  # markup stays literal text


async def test_a_fault_in_a_worker_goes_to_crash_log_without_locals_and_the_app_carries_on(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path, monkeypatch
) -> None:
    ws = team.ws
    pin = softhsm_token.pin

    def broken() -> list[str]:
        pin_in_a_local = pin  # what a traceback with locals, or the message, would give away
        raise RuntimeError(pin_in_a_local)

    def gone() -> list[object]:
        raise HsmError("The token was removed.", "Reinsert it.")

    monkeypatch.setattr(ws.hsm, "mechanisms", broken)  # the Token pane's worker: a bug
    monkeypatch.setattr(ws.hsm.objects, "scan", gone)  # reconciliation's worker: the token says no
    app = app_for(ws, tmp_path, softhsm_token.halves)
    crash_log = tmp_path / "home" / "log" / "crash.log"
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await until(pilot, lambda: isinstance(app.screen, MainScreen))
        await until(pilot, crash_log.exists, "crash.log")

        def notices() -> list[str]:
            return [str(n.message) for n in app._notifications]

        await until(pilot, lambda: any("Reconciliation failed" in n for n in notices()))
        fault = [n for n in notices() if "Reading the token failed" in n]
        assert len(fault) == 1
        assert "internal error (RuntimeError)" in fault[0] and str(crash_log) in fault[0]
        refusal = next(n for n in notices() if "Reconciliation failed" in n)
        assert "The token was removed." in refusal and "crash.log" not in refusal
        await pilot.press("n")  # still alive and answering keys
        await until(pilot, lambda: type(app.screen).__name__ == "CreateKeyScreen")
        await pilot.press("escape")
    assert app.return_code in (None, 0)
    logged = crash_log.read_text()
    assert logged.startswith("--- RuntimeError\n")
    assert logged.count("--- ") == 1  # the token's refusal is a notice, not a crash
    assert ", in broken\n" in logged and "raise RuntimeError(pin_in_a_local)" in logged
    assert pin not in logged
