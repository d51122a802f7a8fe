"""PagedTable alone: the first page at once, the same page not repainted, the collector held."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from rich.text import Text
from textual.app import App, ComposeResult

from kmtui.ui.widgets import paged_table
from kmtui.ui.widgets.paged_table import Page, PagedTable
from tests.ui.helpers import until


class Table(App[None]):
    def compose(self) -> ComposeResult:
        yield PagedTable(page_size=10)

    def on_mount(self) -> None:
        self.query_one(PagedTable).add_columns("name", "state")


def pages(rows: list[tuple[str, str, str]]) -> Any:
    """A fetch of one page of fixed rows (key, name, state style), counting its calls."""

    def fetch(after: Any) -> Page:
        fetch.calls += 1  # type: ignore[attr-defined]
        return [(k, [Text(n), Text("active", style=s)]) for k, n, s in rows], None

    fetch.calls = 0  # type: ignore[attr-defined]
    return fetch


ROWS = [(f"k{n}", f"key {n}", "green") for n in range(5)]


async def test_the_first_page_is_read_at_once_and_the_same_page_is_not_painted_again() -> None:
    app = Table()
    async with app.run_test() as pilot:
        table = app.query_one(PagedTable)
        table.reload(pages(ROWS), now=True)
        assert table._fetch.calls == 1  # type: ignore[union-attr]  # read here, not on the reader
        await until(pilot, lambda: table.row_count == len(ROWS), "the first page")
        before = {key: id(row) for key, row in table.rows.items()}
        table.reload()  # the same rows come back: kept as they are
        await until(pilot, lambda: table._fetch.calls >= 2, "the reload")  # type: ignore[union-attr]
        await pilot.pause(0.05)
        assert {key: id(row) for key, row in table.rows.items()} == before
        table.reload(pages([(k, n, "red") for k, n, _ in ROWS]))  # a theme change: new styles
        await until(pilot, lambda: table.get_row_at(0)[1].style == "red", "the new styles")
        assert {key: id(row) for key, row in table.rows.items()} != before


async def test_the_collector_waits_while_the_table_is_driven(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paged_table, "GC_HOLD", 0.2)
    assert gc.isenabled()
    app = Table()
    async with app.run_test() as pilot:
        table = app.query_one(PagedTable)
        table.reload(pages(ROWS))
        assert not gc.isenabled()
        await until(pilot, lambda: gc.isenabled(), "the collector back")
        table.reload()
        assert not gc.isenabled()
    assert gc.isenabled()  # given back when the table goes, whatever the timer
