"""Quitting a logged-in session shows the ceremony transcript, signed on the token."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Button, Static

from kmtui.core.audit.anchors import signature_ok
from kmtui.ui.screens.transcript import TranscriptScreen
from tests.conftest import SoftHsm, Team
from tests.ui.helpers import SIZE, app_for, main_ready, until


async def test_quit_shows_the_transcript_and_saves_it_for_the_witnesses(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        key = ws.create_key(
            label="in-this-session", algorithm="AES-256", approvals=team.codes("alice", "bob")
        )
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, TranscriptScreen), "the transcript")
        screen = app.screen
        await until(pilot, lambda: screen.document is not None, "the signed transcript")
        text = str(screen.query_one("#transcript-text", Static).render())
        assert "in-this-session" in text and key.versions[0].kcv in text
        assert "alice" in text and "signature" in text
        assert "\\x0a" not in text and "what was done:\n" in text  # lines, not escapes
        checkpoint = screen.document.checkpoint
        assert checkpoint is not None and signature_ok(checkpoint, ws.anchors.public_key()[0])
        screen.query_one("#save-html", Button).press()
        saved = tmp_path / "home" / "data" / "transcripts"
        await until(pilot, lambda: any(saved.glob("*.html")), "the saved transcript")
        assert (next(saved.glob("*.html")).stat().st_mode & 0o777) == 0o600
        screen.query_one("#quit", Button).press()
        await until(pilot, lambda: not app.is_running, "the app to exit")
