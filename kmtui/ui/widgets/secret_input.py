"""A masked input whose value can never be copied or cut to the clipboard (PINs, TOTP codes)."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input


class SecretInput(Input):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(password=True, **kwargs)

    def action_copy(self) -> None:
        """Copying a secret is refused: OSC 52 would put it on the clipboard."""

    def action_cut(self) -> None:
        """Cutting a secret is refused for the same reason (the text stays)."""
