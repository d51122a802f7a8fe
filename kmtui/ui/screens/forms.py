"""Small forms that collect intent before the approval dialog: a new key, a reason, a name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from kmtui.core.errors import KmtuiError
from kmtui.service import Workstation
from kmtui.ui.text import plain


@dataclass(frozen=True)
class NewKey:
    label: str
    algorithm: str
    purpose: str
    policy_name: str
    exportable: bool


T = TypeVar("T")


class FormScreen(ModalScreen[T]):
    """A modal form: Escape cancels (None), the OK button (or Enter in the last field) submits
    what value() makes of the fields."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="form.cancel")
    ]
    TITLE_TEXT = ""

    def compose_fields(self) -> ComposeResult:
        yield from ()

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="form-box"):
            yield Label(self.TITLE_TEXT, classes="form-title")
            yield from self.compose_fields()
            yield Static("", classes="form-error")
            with Horizontal(classes="form-buttons"):
                yield Button("OK", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def cancelled(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#ok")
    @on(Input.Submitted)
    def submitted(self) -> None:
        try:
            value = self.value()
        except (KmtuiError, ValueError) as exc:
            self.query_one(".form-error", Static).update(plain(exc))
            return
        self.dismiss(value)

    def value(self) -> T:
        raise NotImplementedError


class CreateKeyScreen(FormScreen[NewKey]):
    """Offers only the purposes and algorithms the chosen policy allows."""

    TITLE_TEXT = "Create a key"

    def __init__(self, workstation: Workstation) -> None:
        super().__init__()
        self.workstation = workstation
        self.policies = [p.name for p in workstation.store.policies.all()]

    def compose_fields(self) -> ComposeResult:
        yield Input(placeholder="label (printable text)", id="label", max_length=128)
        yield Label("Policy")
        yield Select(
            [(plain(n), n) for n in self.policies],
            value="default" if "default" in self.policies else self.policies[0],
            allow_blank=False,
            id="policy",
        )
        yield Label("Purpose")
        yield Select([], id="purpose", allow_blank=True)
        yield Label("Algorithm")
        yield Select([], id="algorithm", allow_blank=True)
        yield Checkbox("exportable (wrapped only under a trusted key)", id="exportable")

    def on_mount(self) -> None:
        self._policy_changed()
        self.query_one("#label", Input).focus()

    @on(Select.Changed, "#policy")
    def _policy_changed(self) -> None:
        rules = self.workstation.rules(str(self.query_one("#policy", Select).value))
        purposes = [p for p, algs in rules.algorithms.items() if algs]
        purpose = self.query_one("#purpose", Select)
        purpose.set_options([(p, p) for p in purposes])
        if purposes:
            purpose.value = purposes[0]
        box = self.query_one("#exportable", Checkbox)
        box.disabled = not rules.exportable
        box.value = box.value and rules.exportable

    @on(Select.Changed, "#purpose")
    def _purpose_changed(self) -> None:
        policy = str(self.query_one("#policy", Select).value)
        chosen = self.query_one("#purpose", Select).value
        algs = self.workstation.rules(policy).algorithms.get(str(chosen), [])
        algorithm = self.query_one("#algorithm", Select)
        algorithm.set_options([(a, a) for a in algs])
        if algs:
            algorithm.value = algs[-1] if "AES-256" not in algs else "AES-256"

    def value(self) -> NewKey:
        label = self.query_one("#label", Input).value.strip()
        purpose = self.query_one("#purpose", Select).value
        algorithm = self.query_one("#algorithm", Select).value
        if not label:
            raise ValueError("Give the key a label.")
        if not isinstance(purpose, str) or not isinstance(algorithm, str):
            raise ValueError("Choose a purpose and an algorithm.")
        return NewKey(
            label=label,
            algorithm=algorithm,
            purpose=purpose,
            policy_name=str(self.query_one("#policy", Select).value),
            exportable=self.query_one("#exportable", Checkbox).value,
        )


def _choice(choices: list[str]) -> Select[str]:
    return Select([(c, c) for c in choices], value=choices[0], allow_blank=False)


class ChoiceScreen(FormScreen[str]):
    """One choice from a fixed list (a revocation reason)."""

    def __init__(self, title: str, choices: list[str]) -> None:
        super().__init__()
        self.TITLE_TEXT = title
        self.choices = choices

    def compose_fields(self) -> ComposeResult:
        yield _choice(self.choices)

    def on_mount(self) -> None:
        self.query_one(Select).focus()

    def value(self) -> str:
        return str(self.query_one(Select).value)


class NamedChoiceScreen(FormScreen[tuple[str, str]]):
    """A name and one choice from a fixed list (a new operator and their role)."""

    def __init__(self, title: str, choices: list[str]) -> None:
        super().__init__()
        self.TITLE_TEXT = title
        self.choices = choices

    def compose_fields(self) -> ComposeResult:
        yield Input(placeholder="name", id="name", max_length=64)
        yield _choice(self.choices)

    def on_mount(self) -> None:
        self.query_one("#name", Input).focus()

    def value(self) -> tuple[str, str]:
        name = self.query_one("#name", Input).value.strip()
        if not name:
            raise ValueError("Enter a name.")
        return name, str(self.query_one(Select).value)


class TextScreen(FormScreen[str]):
    """One line of free text (an acknowledgement note)."""

    def __init__(self, title: str, placeholder: str) -> None:
        super().__init__()
        self.TITLE_TEXT = title
        self.placeholder = placeholder

    def compose_fields(self) -> ComposeResult:
        yield Input(placeholder=self.placeholder, id="text", max_length=200)

    def on_mount(self) -> None:
        self.query_one("#text", Input).focus()

    def value(self) -> str:
        text = self.query_one("#text", Input).value.strip()
        if not text:
            raise ValueError("This cannot be empty.")
        return text
