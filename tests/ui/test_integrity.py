"""The TUI opens its registry with quick_check, then runs the full check behind the panes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from textual.widgets import Static

from kmtui.core.audit.log import AuditLog
from kmtui.core.errors import DatabaseCorrupt
from kmtui.core.models import Policy
from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from tests.conftest import Clock, SoftHsm
from tests.ui.helpers import SIZE, app_for, main_ready, until


def damaged_index(path: Path) -> None:
    """An index that no longer matches its table: quick_check passes it, integrity_check not."""
    store = Store.open(path)
    for actor in ("carol", "alice", "bob"):  # refusals: what kmtui writes with no one logged in
        AuditLog(store).append("test.event", actor=actor, outcome="refused")
    store.close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA writable_schema=ON")
    raw.execute(
        "UPDATE sqlite_master SET sql = 'CREATE INDEX audit_by_actor ON audit_events (ts, seq)' "
        "WHERE name = 'audit_by_actor'"
    )
    raw.commit()
    raw.close()


async def test_a_clean_registry_is_fully_checked_in_the_background(
    hsm: Hsm, softhsm_token: SoftHsm, tmp_path: Path, clock: Clock
) -> None:
    store = Store.open(tmp_path / "kmtui.db", integrity="quick")
    ws = Workstation.assemble(hsm, store, clock=clock)
    try:
        app = app_for(ws, tmp_path, softhsm_token.halves)
        async with app.run_test(size=SIZE) as pilot:
            await main_ready(pilot)
            await until(pilot, lambda: store.checked == "full", "the full integrity check")
            assert not [n for n in app._notifications if n.title == "Database damaged"]
    finally:
        store.close()


async def test_damage_the_quick_check_misses_is_reported_and_stops_every_write(
    hsm: Hsm, softhsm_token: SoftHsm, tmp_path: Path, clock: Clock
) -> None:
    damaged_index(tmp_path / "kmtui.db")
    with pytest.raises(DatabaseCorrupt):
        Store.open(tmp_path / "kmtui.db").close()  # what every other command still refuses
    store = Store.open(tmp_path / "kmtui.db", integrity="quick")
    ws = Workstation.assemble(hsm, store, clock=clock)
    try:
        app = app_for(ws, tmp_path, softhsm_token.halves)
        async with app.run_test(size=SIZE) as pilot:

            def warned() -> list[str]:
                return [n.message for n in app._notifications if n.title == "Database damaged"]

            await until(pilot, warned, "the damage notice")
            assert "audit_by_actor" in warned()[0] and "restore it from a backup" in warned()[0]
            with pytest.raises(DatabaseCorrupt):
                store.policies.add(Policy("after", updated_at="2026-01-01T00:00:00.000000Z"))
            status = app.screen.query_one("#status", Static)
            await until(pilot, lambda: "DATABASE DAMAGED" in str(status.render()), "the status")
            # Reconciliation, which may repair the registry, never ran on the damaged file.
            assert app.findings is None
            assert not ws.audit.events(action="reconcile.run")
    finally:
        store.close()
