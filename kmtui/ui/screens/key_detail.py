"""One key in full: versions with check values and URIs, token attributes, policy, history."""

from __future__ import annotations

from typing import Any, ClassVar

from pkcs11 import KeyType
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static

from kmtui.core.keys.queries import HISTORY, KeyDetail
from kmtui.core.models import KeyState
from kmtui.service import Workstation
from kmtui.ui.messages import WorkFailed
from kmtui.ui.text import labelled, plain, state_styles, when
from kmtui.ui.workers import attempt


class KeyDetailScreen(ModalScreen[None]):
    """Read-only; Escape goes back to where it was opened from (keys or audit)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,b", "back", "Back", id="detail.back"),
        Binding("y", "copy_uri", "Copy PKCS#11 URI", id="detail.copy_uri"),
    ]

    class Loaded(Message):
        def __init__(self, detail: KeyDetail) -> None:
            super().__init__()
            self.detail = detail

    def __init__(self, workstation: Workstation, key_id: str) -> None:
        super().__init__()
        self.workstation = workstation
        self.key_id = key_id
        self.uri = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-box"):
            yield Label(plain(f"Key {self.key_id}"), id="detail-title", classes="form-title")
            yield Static("Loading…", id="detail-summary")
            yield Label("Versions", classes="section")
            yield DataTable(id="detail-versions", cursor_type="row", show_cursor=False)
            yield Static("", id="detail-uris")
            yield Label("Token attributes (current version)", classes="section")
            yield Static("", id="detail-attributes")
            yield Label("Policy", classes="section")
            yield Static("", id="detail-policy")
            yield Label(f"Audit history (newest {HISTORY})", classes="section")
            yield DataTable(id="detail-history", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail-versions", DataTable).add_columns(
            "Ver", "State", "KCV / fingerprint", "Created"
        )
        self.query_one("#detail-history", DataTable).add_columns(
            "Seq", "Time", "Action", "Outcome", "Actor"
        )
        self._load()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_copy_uri(self) -> None:
        """The current version's PKCS#11 URI to the clipboard (OSC 52): a name, not a secret."""
        if self.uri:
            self.app.copy_to_clipboard(self.uri)
            self.notify(f"Copied {self.uri}", markup=False)

    @work(thread=True, exit_on_error=False, group="detail")
    def _load(self) -> None:
        loaded = attempt(self, "Loading the key", lambda: self.workstation.detail(self.key_id))
        if loaded is None:
            return
        if loaded.attributes_error is not None:
            self.post_message(WorkFailed("Reading token attributes", str(loaded.attributes_error)))
        self.post_message(self.Loaded(loaded))

    def on_key_detail_screen_loaded(self, message: Loaded) -> None:
        detail = message.detail
        key, described = detail.key, detail.described
        self.uri = next(
            (v["pkcs11_uri"] for v in described["versions"] if v["version"] == key.current_version),
            "",
        )
        styles = state_styles(self.app.current_theme)
        last = detail.last_use
        self.query_one("#detail-title", Label).update(plain(f"Key {key.label}", limit=70))
        self.query_one("#detail-summary", Static).update(
            labelled(
                [
                    ("Id", key.id),
                    ("State", plain(key.state, styles.get(key.state, ""))),
                    ("Algorithm", f"{key.algorithm} ({key.purpose})"),
                    ("Policy", key.policy),
                    ("Exportable", "yes" if key.exportable else "no"),
                    ("Created", when(key.created_at)),
                    ("Activated", when(key.activated_at)),
                    ("Rotation due", when(key.rotation_due_at) or "—"),
                    ("Destroy after", when(key.destroy_after) or "—"),
                    ("Revoked", key.revocation_reason or "—"),
                    ("Tags", ", ".join(key.tags) or "—"),
                    ("Last used", f"{when(last.ts)} {last.action}" if last else "never"),
                ]
            )
        )
        versions = self.query_one("#detail-versions", DataTable)
        for v in described["versions"]:
            versions.add_row(
                plain(v["version"]),
                plain(v["state"], styles.get(KeyState(v["state"]), "")),
                plain(v.get("kcv") or v.get("fingerprint", "")),
                plain(when(v["created_at"])),
            )
        # URIs are long: each on its own line, folded, so none is cut off at 80 columns.
        self.query_one("#detail-uris", Static).update(
            labelled([(f"URI v{v['version']}", v["pkcs11_uri"]) for v in described["versions"]])
        )
        attrs = detail.attributes
        self.query_one("#detail-attributes", Static).update(
            labelled([(k, _shown(k, v)) for k, v in sorted(attrs.items())], 20)
            if attrs
            else plain("—")
        )
        self.query_one("#detail-policy", Static).update(
            labelled([(k, v) for k, v in detail.rules.items()], 24)
        )
        history = self.query_one("#detail-history", DataTable)
        for e in detail.history:
            history.add_row(
                plain(e.seq), plain(when(e.ts)), plain(e.action), plain(e.outcome), plain(e.actor)
            )
        # The box scrolls with the arrow keys; a table below the fold would take focus unseen.
        self.query_one("#detail-box", VerticalScroll).focus()

    def on_work_failed(self, message: WorkFailed) -> None:
        """Said here as well as in the app's notice (which the message bubbles on to)."""
        if message.what == "Loading the key":
            self.query_one("#detail-summary", Static).update(plain(message.error))


def _shown(name: str, value: Any) -> str:
    """Attribute values as a custodian reads them: key types by name, identifiers as text."""
    if name == "KEY_TYPE":
        try:
            return KeyType(value).name
        except ValueError:
            return str(value)
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace")
        return text if text.isprintable() else value.hex()
    return str(value)
