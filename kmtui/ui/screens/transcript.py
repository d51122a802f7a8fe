"""End of session: the ceremony transcript, closed by a checkpoint signed on the token."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from kmtui.core.audit import transcript
from kmtui.service import Workstation
from kmtui.ui.text import plain
from kmtui.ui.workers import attempt


class TranscriptBuilt(Message):
    def __init__(self, document: transcript.Transcript) -> None:
        super().__init__()
        self.document = document


class TranscriptScreen(ModalScreen[bool]):
    """Shows the session's transcript; dismisses True to quit, False to go back."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="transcript.back"),
    ]

    def __init__(self, workstation: Workstation, since: int, out_dir: Path) -> None:
        super().__init__()
        self.workstation = workstation
        self.since = since
        self.out_dir = out_dir
        self.document: transcript.Transcript | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="transcript-box"):
            yield Label("End of session — ceremony transcript", classes="form-title")
            with VerticalScroll():
                yield Static("Signing a checkpoint on the token…", id="transcript-text")
            with Horizontal(classes="buttons"):
                yield Button("Save text", id="save-text", disabled=True)
                yield Button("Save HTML to print", id="save-html", disabled=True)
                yield Button("Quit", id="quit", variant="primary")
                yield Button("Back", id="back")

    def on_mount(self) -> None:
        self.build()

    @work(thread=True, exit_on_error=False, group="transcript")
    def build(self) -> None:
        ws = self.workstation
        document = attempt(
            self,
            "The transcript",
            lambda: transcript.build(ws.audit, ws.anchors, ws.hsm.name, self.since),
        )
        if document is not None:
            self.post_message(TranscriptBuilt(document))

    def on_transcript_built(self, message: TranscriptBuilt) -> None:
        self.document = message.document
        lines = message.document.to_text().splitlines()  # each line cleaned, the breaks kept
        self.query_one("#transcript-text", Static).update(Text("\n").join(map(plain, lines)))
        for button in ("#save-text", "#save-html"):
            self.query_one(button, Button).disabled = False

    @on(Button.Pressed, "#save-text")
    def save_text(self) -> None:
        self._save("txt")

    @on(Button.Pressed, "#save-html")
    def save_html(self) -> None:
        self._save("html")

    def _save(self, kind: str) -> None:
        if self.document is None:
            return
        doc = self.document
        self.out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.out_dir / f"transcript-{doc.first_seq}-{doc.last_seq}.{kind}"
        body = doc.to_html() if kind == "html" else doc.to_text()
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(body)
        except OSError as exc:
            self.notify(f"Could not write {target}: {exc.strerror}", severity="error", markup=False)
            return
        self.notify(Text(f"Transcript written to {target}").plain, markup=False)

    @on(Button.Pressed, "#quit")
    def quit_app(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#back")
    def action_back(self) -> None:
        self.dismiss(False)
