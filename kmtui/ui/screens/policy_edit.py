"""A policy's stored rules as JSON to edit; the service validates them before anyone approves."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.widgets import Static, TextArea

from kmtui.core.models import Policy
from kmtui.ui.screens.forms import FormScreen
from kmtui.ui.text import plain


class PolicyEditScreen(FormScreen[dict[str, Any]]):
    def __init__(self, current: Policy) -> None:
        super().__init__()
        self.current = current
        self.TITLE_TEXT = f"Change policy {current.name}"

    def compose_fields(self) -> ComposeResult:
        yield Static(
            plain(
                "Rules left out take their defaults, quorum entries one by one; a sensitive "
                "operation never needs fewer than 2 approvers. Two approvers confirm the "
                "change, shown each rule old → new."
            ),
            classes="form-hint",
        )
        yield TextArea(
            json.dumps(self.current.rules, indent=2, sort_keys=True),
            language=None,
            id="rules-json",
            soft_wrap=True,
        )

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def value(self) -> dict[str, Any]:
        try:
            rules = json.loads(self.query_one(TextArea).text)
        except ValueError as exc:
            raise ValueError(f"Not valid JSON: {exc}") from None
        if not isinstance(rules, dict):
            raise ValueError("The rules are a JSON object.")
        return rules
