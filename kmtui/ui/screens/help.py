"""Every key binding with the key it has now (after the user's keymap), and the filter syntax."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

FILTERS = """\
Keys filter:  words are a label prefix; also state:active alg:AES-256 policy:kek
              tag:pci id:k… (terms combine)
Audit filter: key:ID op:alice action:key.rotate outcome:refused
              since:2026-05-01 until:2026-05-31 (dates or date-times, UTC)
Remap keys in config.toml under [ui.bindings]:  "keys.rotate" = "ctrl+o"
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,f1,question_mark", "dismiss_help", "Close", id="help.close"),
    ]

    def __init__(self, sections: list[tuple[str, list[Binding]]], keymap: dict[str, str]) -> None:
        super().__init__()
        self.sections = sections
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        text = Text()
        for title, bindings in self.sections:
            text.append(f"{title}\n", style="bold underline")
            for b in bindings:
                key = self.keymap.get(b.id, b.key) if b.id else b.key
                shown = ", ".join(
                    self.app.get_key_display(Binding(k, b.action)) for k in key.split(",")
                )
                text.append(f"  {shown:<14}", style="bold")
                text.append(f"{b.tooltip or b.description or b.action:<32}")
                text.append(f"{b.id or ''}\n", style="dim")
            text.append("\n")
        text.append(FILTERS)
        with VerticalScroll(id="help-box"):
            yield Label("kmtui — keys", classes="form-title")
            yield Static(text)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
