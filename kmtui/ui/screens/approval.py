"""The one approval dialog: what will happen, its digest and KCV, and each approver's code."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from kmtui.core.control.operations import ApprovalInput
from kmtui.core.errors import REFUSAL_REASONS, ApproversRefused, KmtuiError
from kmtui.core.safetext import clean
from kmtui.service import Prepared
from kmtui.ui.text import labelled, plain
from kmtui.ui.widgets.secret_input import SecretInput
from kmtui.ui.workers import fault

T = TypeVar("T")
R = TypeVar("R")
Runner = Callable[[Sequence[ApprovalInput]], T]
"""Runs the prepared operation with the approvals collected (in a worker, not on the UI thread)."""
CODE = re.compile(r"[0-9]{6}", re.ASCII)


class ApprovalScreen(ModalScreen[T]):
    """Dismissed with the runner's result once the service accepted and ran the operation."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="approval.cancel"),
    ]

    class Ran(Message, Generic[R]):
        def __init__(self, result: R, approvers: list[str]) -> None:
            super().__init__()
            self.result = result
            self.approvers = approvers

    class Refused(Message):
        def __init__(self, error: str, refusals: tuple[tuple[str, str], ...]) -> None:
            super().__init__()
            self.error = error
            self.refusals = refusals

    def __init__(self, prepared: Prepared, run: Runner[T], *, confirm_label: bool = False) -> None:
        super().__init__()
        self.prepared = prepared
        self.run = run
        self.confirm_label = confirm_label
        self.busy = False

    def compose(self) -> ComposeResult:
        p = self.prepared
        key = p.key
        with Vertical(id="approval-box"):
            yield Label("Approve this operation", id="approval-title")
            yield Static(plain(p.summary, "bold"), id="approval-summary")
            details: list[tuple[str, object]] = [
                ("Digest", Text(p.operation.short_digest, style="bold reverse")),
                ("Operation", str(p.operation.kind)),
            ]
            if key is not None:
                details += [("Key", plain(key.label, limit=60)), ("KCV", p.kcv or "—")]
            quorum = f"{p.quorum} distinct operators" if p.quorum else "no approvals needed"
            details.append(("Quorum", quorum))
            yield Static(labelled(details, 11), id="approval-details")
            if p.changes:  # a policy change: every rule it touches, old → new, as signed
                lines: list[tuple[str, object]] = [
                    ("Changes" if n == 0 else "", line) for n, line in enumerate(p.changes)
                ]
                yield Static(labelled(lines, 11), id="approval-changes")
            if self.confirm_label and key is not None:
                yield Static(
                    plain(f"Type the key label to confirm: {clean(key.label, 60)}"),
                    classes="approval-hint",
                )
                yield Input(placeholder="key label", id="confirm-label")
            for i in range(p.quorum):
                with Horizontal(classes="approver"):
                    yield Input(placeholder=f"approver {i + 1}", id=f"name-{i}", max_length=64)
                    yield SecretInput(
                        placeholder=f"code for {p.operation.short_digest}",
                        id=f"code-{i}",
                        max_length=6,
                        restrict=r"[0-9]*",
                    )
                    yield Static("", id=f"result-{i}", classes="approver-result")
            yield Static("", id="approval-error")
            with Horizontal(id="approval-buttons"):
                yield Button(
                    "Approve and run" if p.quorum else "Run", id="approve", variant="primary"
                )
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        inputs = self.query(Input)
        (inputs.first() if inputs else self.query_one("#approve", Button)).focus()

    def action_cancel(self) -> None:
        if not self.busy:
            self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def cancelled(self) -> None:
        self.action_cancel()

    @on(Input.Submitted)
    def next_field(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        index = inputs.index(event.input)
        if index + 1 < len(inputs):
            inputs[index + 1].focus()
        else:
            self.approve()

    @on(Button.Pressed, "#approve")
    def approve(self) -> None:
        if self.busy:
            return
        problem, approvals = self._collect()
        self._error(problem)
        if problem:
            return
        self.busy = True
        self.query_one("#approve", Button).disabled = True
        self._error("Checking codes and running…")
        self._execute(approvals)

    def _collect(self) -> tuple[str, list[ApprovalInput]]:
        key = self.prepared.key
        if self.confirm_label and key is not None:
            typed = self.query_one("#confirm-label", Input).value
            if typed not in (key.label, clean(key.label)):
                return "The typed label does not match the key's label.", []
        approvals: list[ApprovalInput] = []
        for i in range(self.prepared.quorum):
            name = self.query_one(f"#name-{i}", Input).value.strip()
            code = self.query_one(f"#code-{i}", Input).value
            if not name:
                return f"Approver {i + 1}: enter a name.", []
            if not CODE.fullmatch(code):
                return f"Approver {i + 1}: the code is exactly six digits.", []
            approvals.append(ApprovalInput(name, code))
        names = [a.operator.casefold() for a in approvals]
        if len(set(names)) != len(names):
            return "Each approval must come from a different operator.", []
        return "", approvals

    def _error(self, text: str) -> None:
        self.query_one("#approval-error", Static).update(plain(text))

    @work(thread=True, exit_on_error=False, group="approval")
    def _execute(self, approvals: list[ApprovalInput]) -> None:
        try:
            result = self.run(approvals)
        except ApproversRefused as exc:
            self.post_message(self.Refused(str(exc), exc.refusals))
        except KmtuiError as exc:
            self.post_message(self.Refused(str(exc), ()))
        except Exception as exc:
            self.post_message(self.Refused(fault(self, "The operation", exc), ()))
        else:
            self.post_message(self.Ran(result, [a.operator for a in approvals]))

    def on_approval_screen_ran(self, message: Ran[T]) -> None:
        for i in range(self.prepared.quorum):
            self.query_one(f"#result-{i}", Static).update(Text("✓ accepted", style="bold"))
        who = ", ".join(message.approvers)
        self.app.notify(
            clean(f"Done: {self.prepared.summary}" + (f" (approved by {who})" if who else "")),
            markup=False,
        )
        self.dismiss(message.result)

    def on_approval_screen_refused(self, message: Refused) -> None:
        self.busy = False
        self.query_one("#approve", Button).disabled = False
        refused = {name.casefold(): reason for name, reason in message.refusals}
        for i in range(self.prepared.quorum):
            name = self.query_one(f"#name-{i}", Input).value.strip()
            reason = refused.get(name.casefold())
            result = self.query_one(f"#result-{i}", Static)
            if reason is not None:
                result.update(
                    Text(f"✗ {REFUSAL_REASONS.get(reason, clean(reason, 30))}", style="bold")
                )
            elif message.refusals:
                result.update(Text("✓ code accepted", style="dim"))
            else:
                result.update("")
            self.query_one(f"#code-{i}", Input).value = ""
        self._error(message.error)
