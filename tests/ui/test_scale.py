"""A registry of 100,000 keys and 1,000,000 audit events: every pane pages, nothing loads it all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import Input, Static

from kmtui.core.registry.db import Store
from kmtui.core.token.session import Hsm
from kmtui.service import Workstation
from kmtui.ui.widgets.keys_pane import PAGE
from kmtui.ui.widgets.paged_table import PagedTable
from tests.conftest import Clock, SoftHsm
from tests.ui import scale_data
from tests.ui.helpers import SIZE, app_for, main_ready, until

pytestmark = pytest.mark.slow  # ~35 s to build the database once, then cached under the temp dir
KEYS, EVENTS = 100_000, 1_000_000


@pytest.fixture(scope="module")
def big_db() -> Path:
    return scale_data.cached(KEYS, EVENTS)[0]


@pytest.fixture
def big(hsm: Hsm, tmp_path: Path, clock: Clock, big_db: Path) -> Iterator[Workstation]:
    store = Store.open(scale_data.fresh_copy(big_db, tmp_path / "kmtui.db"))
    ws = Workstation.assemble(hsm, store, clock=clock)
    ws.seals.start("scale-test")  # what the first log-in does to a registry made before seals
    yield ws
    store.close()


def labels(table: PagedTable) -> list[str]:
    return [table.get_row_at(i)[0].plain for i in range(table.row_count)]


def seqs(table: PagedTable) -> list[int]:
    return [int(table.get_row_at(i)[0].plain) for i in range(table.row_count)]


async def test_a_huge_registry_opens_filters_scrolls_and_shows_the_newest_events_page_by_page(
    big: Workstation, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    first_page = [k.label for k in big.store.keys.page(limit=PAGE)]
    matching = [k.label for k in big.store.keys.page(limit=PAGE, label_prefix="orders-0001")]
    app = app_for(big, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        table = app.screen.query_one("#keys", PagedTable)
        await until(pilot, lambda: labels(table) == first_page, "the first page of keys")
        summary = app.screen.query_one("#keys-summary", Static)
        await until(pilot, lambda: "more load as you scroll" in str(summary.render()))

        await pilot.press("slash")
        await pilot.press(*"orders-0001")
        await until(pilot, lambda: labels(table) == matching, "the filtered page")
        assert 0 < len(matching) < PAGE and table.exhausted

        app.screen.query_one("#keys-filter", Input).value = ""
        await until(pilot, lambda: labels(table) == first_page, "the first page again")
        table.focus()
        await pilot.pause()
        await pilot.press("ctrl+end")  # the cursor reaches the last loaded row: next page loads
        await until(pilot, lambda: table.row_count == 2 * PAGE, "the second page")
        await pilot.pause(0.3)
        assert table.row_count <= 3 * PAGE  # pages load as needed, never the whole registry

        await pilot.press("3")
        audit = app.screen.query_one("#audit", PagedTable)
        await until(pilot, lambda: audit.row_count >= PAGE, "the audit trail")
        await pilot.press("f5")  # the log-in and reconciliation added events since it loaded
        newest = [e.seq for e in big.audit.events(limit=PAGE)]
        await until(pilot, lambda: seqs(audit)[:PAGE] == newest, "the newest events")
        assert newest[0] > EVENTS and audit.row_count <= 2 * PAGE
