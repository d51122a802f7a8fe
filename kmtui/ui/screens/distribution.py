"""Keys that travel, in the TUI: export and import forms, and components shown or typed one
custodian at a time. The work itself is kmtui.core.keys.distribution, through the gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from kmtui.core.errors import KmtuiError
from kmtui.core.keys import components
from kmtui.core.models import Key
from kmtui.service import Workstation
from kmtui.ui.screens.forms import FormScreen
from kmtui.ui.text import plain


def wrapping_keys(ws: Workstation, *, for_export: bool) -> list[Key]:
    """Keys that can wrap (export: trusted KEKs and trusted recipients) or unwrap (import)."""
    keys = [k for k in ws.store.keys.page(limit=500) if k.purpose == "wrap"]
    if for_export:
        return [k for k in keys if "trusted" in k.tags]
    return [k for k in keys if "recipient" not in k.tags]


@dataclass(frozen=True)
class ExportRequest:
    wrapping_key: str
    out: Path


@dataclass(frozen=True)
class ImportRequest:
    path: Path
    unwrapping_key: str
    label: str
    kcv: str


@dataclass(frozen=True)
class ComponentsRequest:
    label: str
    algorithm: str
    purpose: str
    custodians: list[str]


class ExportScreen(FormScreen[ExportRequest]):
    TITLE_TEXT = "Export the key wrapped under a trusted key"

    def __init__(self, ws: Workstation, key: Key, out_dir: Path) -> None:
        super().__init__()
        self.keys = wrapping_keys(ws, for_export=True)
        self.default = out_dir / f"{key.id}-v{key.current_version}.json"

    def compose_fields(self) -> ComposeResult:
        yield Label("Wrap with (trusted KEKs and recipients)")
        yield Select(
            [(plain(f"{k.label} ({k.id})"), k.id) for k in self.keys],
            id="wrapper",
            allow_blank=True,
        )
        yield Label("Write to")
        yield Input(value=str(self.default), id="out")

    def value(self) -> ExportRequest:
        wrapper = self.query_one("#wrapper", Select).value
        if not isinstance(wrapper, str):
            raise ValueError("Choose the wrapping key (a trusted KEK or recipient).")
        return ExportRequest(wrapper, Path(self.query_one("#out", Input).value.strip()))


class ImportScreen(FormScreen[ImportRequest]):
    TITLE_TEXT = "Import a wrapped key file"

    def __init__(self, ws: Workstation) -> None:
        super().__init__()
        self.keys = wrapping_keys(ws, for_export=False)

    def compose_fields(self) -> ComposeResult:
        yield Input(placeholder="path of the key file", id="path")
        yield Label("Unwrap with")
        yield Select(
            [(plain(f"{k.label} ({k.id})"), k.id) for k in self.keys], id="kek", allow_blank=True
        )
        yield Input(placeholder="label for the imported key", id="label", max_length=128)
        yield Input(placeholder="KCV from the paper form (optional)", id="kcv", max_length=6)

    def value(self) -> ImportRequest:
        kek = self.query_one("#kek", Select).value
        path = self.query_one("#path", Input).value.strip()
        label = self.query_one("#label", Input).value.strip()
        if not path or not label or not isinstance(kek, str):
            raise ValueError("A file, the key-encryption key and a label are needed.")
        return ImportRequest(Path(path), kek, label, self.query_one("#kcv", Input).value)


class ComponentsScreen(FormScreen[ComponentsRequest]):
    """Label, algorithm, purpose and the custodians, in the order they hold components."""

    def __init__(self, generate: bool) -> None:
        super().__init__()
        self.TITLE_TEXT = (
            "Generate a key as components" if generate else "Enter a key from components"
        )

    def compose_fields(self) -> ComposeResult:
        yield Input(placeholder="label", id="label", max_length=128)
        yield Select(
            [(a, a) for a in ("AES-256", "AES-192", "AES-128")],
            value="AES-256",
            allow_blank=False,
            id="algorithm",
        )
        yield Select(
            [("wrap (key-encryption key)", "wrap"), ("encrypt (data key)", "encrypt")],
            value="wrap",
            allow_blank=False,
            id="purpose",
        )
        yield Input(placeholder="custodians, in order: alice,bob,carol", id="custodians")

    def value(self) -> ComponentsRequest:
        label = self.query_one("#label", Input).value.strip()
        names = [
            n.strip() for n in self.query_one("#custodians", Input).value.split(",") if n.strip()
        ]
        if not label or not names:
            raise ValueError("A label and the custodians are needed.")
        return ComponentsRequest(
            label,
            str(self.query_one("#algorithm", Select).value),
            str(self.query_one("#purpose", Select).value),
            names,
        )


class RevealScreen(ModalScreen[None]):
    """Each component to its custodian alone: hidden until they reveal it, hidden again after."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "nothing", "", id="reveal.noescape", show=False)
    ]

    def __init__(self, shares: list[components.Component], key: Key) -> None:
        super().__init__()
        self.shares = shares
        self.key = key
        self.index = 0
        self.shown = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="form-box"):
            yield Label("Components: one custodian at a time", classes="form-title")
            yield Static("", id="reveal-text")
            with Horizontal(classes="form-buttons"):
                yield Button("Reveal", id="reveal", variant="primary")

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        text = self.query_one("#reveal-text", Static)
        button = self.query_one("#reveal", Button)
        if self.index >= len(self.shares):
            text.update(
                plain(
                    f"All {len(self.shares)} components handed out. Key "
                    f"{self.key.label!r} KCV {self.key.versions[0].kcv}."
                )
            )
            button.label = "Done"
            return
        share = self.shares[self.index]
        if self.shown:
            text.update(
                plain(
                    f"Component {self.index + 1} of {len(self.shares)} for "
                    f"{share.custodian}:\n\n  {components.grouped(share.value)}\n\n  KCV "
                    f"{share.kcv}\n\nWrite it down, then hide it."
                )
            )
            button.label = "Hide"
        else:
            text.update(plain(f"{share.custodian}: press Reveal when only you can see the screen."))
            button.label = "Reveal"

    @on(Button.Pressed, "#reveal")
    def pressed(self) -> None:
        if self.index >= len(self.shares):
            self.shares = []  # drop the values as soon as they were all handed out
            self.dismiss(None)
            return
        if self.shown:
            self.index += 1
        self.shown = not self.shown
        self._show()

    def action_nothing(self) -> None:
        """Escape does not skip a custodian: every component must be handed out."""


class EnterComponentsScreen(ModalScreen[list[components.Component]]):
    """Each custodian types their component and its KCV; a typo is caught at that component."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="components.cancel")
    ]

    def __init__(self, workstation: Workstation, custodians: list[str], algorithm: str) -> None:
        super().__init__()
        self.workstation = workstation
        self.custodians = custodians
        self.key_bytes = components.size_of(algorithm)
        self.entered: list[components.Component] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="form-box"):
            yield Label("Enter the key's components", classes="form-title")
            yield Static("", id="who")
            yield Input(
                placeholder="component (hex, groups allowed)", password=True, id="component"
            )
            yield Input(placeholder="its KCV", id="kcv", max_length=6)
            yield Static("", classes="form-error")
            with Horizontal(classes="form-buttons"):
                yield Button("Check and next", id="next", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self._prompt()

    def _prompt(self) -> None:
        number = len(self.entered) + 1
        self.query_one("#who", Static).update(
            plain(f"{self.custodians[number - 1]}: component {number} of {len(self.custodians)}")
        )
        self.query_one("#component", Input).value = ""
        self.query_one("#kcv", Input).value = ""
        self.query_one("#component", Input).focus()

    @on(Button.Pressed, "#next")
    @on(Input.Submitted, "#kcv")
    def checked(self) -> None:
        number = len(self.entered) + 1
        try:
            share = self.workstation.components.enter(
                self.query_one("#component", Input).value,
                self.query_one("#kcv", Input).value,
                self.entered,
                self.custodians[number - 1],
                self.key_bytes,
            )
        except KmtuiError as exc:
            self.query_one(".form-error", Static).update(plain(exc))
            return
        self.query_one(".form-error", Static).update(
            plain(f"component {number}: KCV {share.kcv} matches")
        )
        self.entered.append(share)
        if len(self.entered) == len(self.custodians):
            self.dismiss(self.entered)
        else:
            self._prompt()

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.entered = []
        self.dismiss(None)
