"""A DataTable fed one page at a time from SQLite as the user scrolls (keyset, never OFFSET)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.text import Text
from textual import work
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable

from kmtui.ui.workers import attempt

Row = tuple[str, Sequence[Text]]
Page = tuple[list[Row], Any]
"""Rows (key, cells) and the cursor to fetch the next page from (None when there is no more)."""
Fetch = Callable[[Any], Page]

LOOKAHEAD = 20
READER = ThreadPoolExecutor(1, thread_name_prefix="kmtui-reader")
"""Every page read runs here: one thread, so one SQLite connection (a thread per page would
open and keep a connection, with its cache, for every page ever fetched)."""


class PagedTable(DataTable[Text]):
    """Only the pages the user reached are in memory; the next one loads before it is needed."""

    class PageLoaded(Message):
        def __init__(self, table: PagedTable, rows: list[Row], after: Any, generation: int):
            super().__init__()
            self.table = table
            self.rows = rows
            self.after = after
            self.generation = generation

    def __init__(self, *, page_size: int = 100, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.page_size = page_size
        self._fetch: Fetch | None = None
        self._after: Any = None
        self._more = False
        self._loading = False
        self._generation = 0

    @property
    def exhausted(self) -> bool:
        return not self._more

    def reload(self, fetch: Fetch | None = None) -> None:
        """Start again from the first page (a new filter or sort, or data that changed)."""
        if fetch is not None:
            self._fetch = fetch
        if self._fetch is None:
            return
        self._generation += 1
        self._after, self._more, self._loading = None, True, True
        self._load(self._fetch, None, self._generation)

    def load_more(self) -> None:
        if self._fetch is None or self._loading or not self._more:
            return
        self._loading = True
        self._load(self._fetch, self._after, self._generation)

    @work(exit_on_error=False, group="page")
    async def _load(self, fetch: Fetch, after: Any, generation: int) -> None:
        def read() -> Page | None:
            if generation != self._generation:  # typed over before its turn came: skip it
                return [], None
            return attempt(self, "Loading a page", lambda: fetch(after))

        page = await asyncio.get_running_loop().run_in_executor(READER, read)
        rows, next_after = page if page is not None else ([], None)
        self.post_message(self.PageLoaded(self, rows, next_after, generation))

    def on_paged_table_page_loaded(self, message: PagedTable.PageLoaded) -> None:
        if message.generation != self._generation:
            message.stop()  # a page of an older filter: drop it
            return
        first = self._after is None
        keep = self.cursor_row
        if first:
            self.clear()
        for key, cells in message.rows:
            if key not in self.rows:
                self.add_row(*cells, key=key)
        self._after, self._more, self._loading = message.after, message.after is not None, False
        if first and self.row_count:
            self.move_cursor(row=min(keep, self.row_count - 1))
        self._near_end(self.cursor_row)

    def _near_end(self, row: int) -> None:
        visible = self.scrollable_content_region.height or 20
        if row >= self.row_count - max(LOOKAHEAD, visible):
            self.load_more()

    def watch_cursor_coordinate(self, old: Coordinate, new: Coordinate) -> None:
        super().watch_cursor_coordinate(old, new)
        self._near_end(new.row)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        bottom = int(new_value) + (self.scrollable_content_region.height or 20)
        self._near_end(bottom)
