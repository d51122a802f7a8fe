"""A DataTable fed one page at a time from SQLite as the user scrolls (keyset, never OFFSET)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rich.text import Text
from textual import work
from textual.coordinate import Coordinate
from textual.message import Message
from textual.timer import Timer
from textual.widgets import DataTable

from kmtui.ui.workers import attempt

Row = tuple[str, Sequence[Text]]
Page = tuple[list[Row], Any]
"""Rows (key, cells) and the cursor to fetch the next page from (None when there is no more)."""
Fetch = Callable[[Any], Page]

LOOKAHEAD = 20
GC_HOLD = 1.0
"""Seconds after the last filter, sort or page before the cyclic collector may run again: its
full passes stopped the UI thread for 30-130 ms in the middle of typing a filter at 100,000
keys (the garbage is Textual's render caches). Textual pauses it while scrolling the same way
(App.PAUSE_GC_ON_SCROLL)."""
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
        self._shown: list[tuple[Any, ...]] = []
        """What the rows on screen are (key and cells), while they are exactly one first page."""
        self._gc_hold: Timer | None = None

    @property
    def exhausted(self) -> bool:
        return not self._more

    def reload(self, fetch: Fetch | None = None, *, now: bool = False) -> None:
        """Start again from the first page (a new filter or sort, or data that changed).

        `now` reads that page at once, on the UI thread, not on the reader: for a pane's first
        page, while the UI thread is busy starting up and a reader thread would wait for the
        GIL at each row SQLite hands back (60-140 ms for one page at 100,000 keys, against
        ~4 ms read on the UI thread), so the first frame shows it. Later pages and filters go
        to the reader, as a scan may take longer.
        """
        if fetch is not None:
            self._fetch = fetch
        if self._fetch is None:
            return
        self._generation += 1
        self._after, self._more, self._loading = None, True, True
        if now:
            self._post_page(self._fetch, None, self._generation)
        else:
            self._hold_gc()
            self._load(self._fetch, None, self._generation)

    def load_more(self) -> None:
        if self._fetch is None or self._loading or not self._more:
            return
        self._loading = True
        self._hold_gc()
        self._load(self._fetch, self._after, self._generation)

    def _hold_gc(self) -> None:
        """No cyclic collection until GC_HOLD seconds after the last call (see GC_HOLD)."""
        if self._gc_hold is not None:
            self._gc_hold.reset()
        elif gc.isenabled():  # else someone else holds it, and gives it back
            gc.disable()
            self._gc_hold = self.set_timer(GC_HOLD, self._release_gc)

    def _release_gc(self) -> None:
        if self._gc_hold is not None:
            self._gc_hold = None
            gc.enable()

    def on_unmount(self) -> None:
        if self._gc_hold is not None:
            self._gc_hold.stop()
        self._release_gc()

    @work(exit_on_error=False, group="page")
    async def _load(self, fetch: Fetch, after: Any, generation: int) -> None:
        def read() -> Page | None:
            if generation != self._generation:  # typed over before its turn came: skip it
                return [], None
            return attempt(self, "Loading a page", lambda: fetch(after))

        page = await asyncio.get_running_loop().run_in_executor(READER, read)
        rows, next_after = page if page is not None else ([], None)
        self.post_message(self.PageLoaded(self, rows, next_after, generation))

    def _post_page(self, fetch: Fetch, after: Any, generation: int) -> None:
        page = attempt(self, "Loading a page", lambda: fetch(after))
        rows, next_after = page if page is not None else ([], None)
        self.post_message(self.PageLoaded(self, rows, next_after, generation))

    def on_paged_table_page_loaded(self, message: PagedTable.PageLoaded) -> None:
        if message.generation != self._generation:
            message.stop()  # a page of an older filter: drop it
            return
        first = self._after is None
        keep = self.cursor_row
        if first:
            shown = [_signature(row) for row in message.rows]
            if shown == self._shown and self.row_count == len(shown):
                # The same rows again (a keystroke that narrows nothing, a reload after a change
                # elsewhere): keep them, and their rendering, instead of painting them afresh.
                self._after, self._more = message.after, message.after is not None
                self._loading = False
                self._near_end(self.cursor_row)
                return
            self._shown = shown
            self.clear()
        else:
            self._shown = []
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


def _signature(row: Row) -> tuple[Any, ...]:
    """A row's key and what its cells show (text, style and spans: a theme change differs)."""
    key, cells = row
    return (key, *((cell.plain, str(cell.style), tuple(cell.spans)) for cell in cells))
