"""The ceremony transcript: who was present, what was done, with which keys, and the signed head.

Built from the audit trail alone (the events between two sequence numbers) and closed by an
HSM-signed checkpoint, so the paper the witnesses sign names exactly the trail it describes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from kmtui.core.audit.anchors import Anchors, Checkpoint
from kmtui.core.audit.log import AuditLog
from kmtui.core.models import AuditEvent
from kmtui.core.safetext import clean

GATED = ("key.", "policy.", "operator.", "reconcile.resolve")
CLOSING = ("success", "failure", "refused")


@dataclass(frozen=True)
class Step:
    seq: int
    ts: str
    action: str
    outcome: str
    subject: str
    check: str
    approvers: str
    note: str


@dataclass
class Transcript:
    token: str
    first_seq: int
    last_seq: int
    started: str
    ended: str
    steps: list[Step] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None

    def to_text(self) -> str:
        lines = [
            "kmtui ceremony transcript",
            f"token          {self.token}",
            f"events         {self.first_seq} to {self.last_seq} ({self.started} to {self.ended})",
            f"present        {', '.join(self.present) or 'no operator approved anything'}",
            "",
            "what was done:",
        ]
        for s in self.steps:
            lines.append(f"  #{s.seq:<6} {s.ts[:19]}  {s.action:<22} {s.outcome:<8} {s.subject}")
            detail = "  ".join(
                x
                for x in (
                    s.check and f"check {s.check}",
                    s.approvers and f"approved by {s.approvers}",
                    s.note,
                )
                if x
            )
            if detail:
                lines.append(f"{'':<10}{detail}")
        if not self.steps:
            lines.append("  nothing")
        if self.refusals:
            lines += ["", "refused approvals:"] + [f"  {r}" for r in self.refusals]
        lines += ["", *self._checkpoint_lines(), "", *self._signature_lines()]
        return "\n".join(clean(line) for line in lines) + "\n"

    def _checkpoint_lines(self) -> list[str]:
        cp = self.checkpoint
        if cp is None:
            return ["signed checkpoint: none (the trail is empty)"]
        return [
            f"signed checkpoint at event {cp.seq} ({cp.ts})",
            f"  head hash  {cp.head_hash}",
            f"  signed by  {cp.key_fingerprint}",
            f"  signature  {cp.signature}",
        ]

    @staticmethod
    def _signature_lines() -> list[str]:
        return ["witnesses (name, signature, date):", *(["  ____________________"] * 3)]

    def to_html(self) -> str:
        e = html.escape
        rows = "".join(
            f"<tr><td>{s.seq}</td><td>{e(s.ts[:19])}</td><td>{e(clean(s.action))}</td>"
            f"<td>{e(s.outcome)}</td><td>{e(clean(s.subject))}</td><td>{e(clean(s.check))}</td>"
            f"<td>{e(clean(s.approvers))}</td><td>{e(clean(s.note))}</td></tr>"
            for s in self.steps
        )
        refusals = "".join(f"<li>{e(clean(r))}</li>" for r in self.refusals)
        checkpoint = "<br>".join(e(clean(x)) for x in self._checkpoint_lines())
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>kmtui ceremony transcript"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
            "collapse}td,th{border:1px solid #444;padding:4px 6px;font-size:11pt}"
            ".mono{font-family:monospace;word-break:break-all}.sig{margin-top:3em}"
            ".sig div{border-bottom:1px solid #000;width:60%;height:2.5em}</style></head><body>"
            f"<h1>kmtui ceremony transcript</h1><p>Token {e(clean(self.token))}<br>"
            f"Events {self.first_seq} to {self.last_seq} ({e(self.started)} to "
            f"{e(self.ended)})<br>Present: {e(clean(', '.join(self.present)) or 'nobody')}</p>"
            "<table><tr><th>#</th><th>time (UTC)</th><th>action</th><th>outcome</th><th>key"
            "</th><th>check</th><th>approved by</th><th>note</th></tr>"
            f"{rows}</table>"
            + (f"<h2>Refused approvals</h2><ul>{refusals}</ul>" if refusals else "")
            + f"<p class='mono'>{checkpoint}</p><div class='sig'><p>Witnesses (name, "
            "signature, date)</p><div></div><div></div><div></div></div></body></html>\n"
        )


def build(
    audit: AuditLog, anchors: Anchors, token: str, since: int, *, sign: bool = True
) -> Transcript:
    """The events after `since`, closed by a checkpoint signed now (when `sign`)."""
    checkpoint = anchors.checkpoint("ceremony transcript") if sign else anchors.latest()
    events = _events(audit, since)
    transcript = Transcript(
        token=token,
        first_seq=since + 1,
        last_seq=events[-1].seq if events else since,
        started=events[0].ts if events else "",
        ended=events[-1].ts if events else "",
        checkpoint=checkpoint,
    )
    intents = {e.seq: e for e in events if e.outcome == "intent"}
    present: set[str] = set()
    for event in events:
        if event.action == "approval.granted":
            present.add(str(event.params.get("operator", "")))
        elif event.action == "approval.refused":
            transcript.refusals.append(
                f"#{event.seq} {event.params.get('operator', '?')}: "
                f"{event.params.get('reason', '?')} ({event.params.get('kind', '')})"
            )
        elif event.action == "operator.confirmed":
            transcript.steps.append(
                Step(
                    event.seq,
                    event.ts,
                    event.action,
                    event.outcome,
                    str(event.params.get("operator", "")),
                    "",
                    "",
                    "proved their authenticator",
                )
            )
        elif event.action.startswith(GATED) and event.outcome in CLOSING:
            transcript.steps.append(_step(event, intents.get(_intent_of(event))))
    transcript.present = sorted(p for p in present if p)
    return transcript


def _events(audit: AuditLog, since: int) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    after = since
    while page := audit.events(after_seq=after, limit=500, newest_first=False):
        out.extend(page)
        after = page[-1].seq
    return out


def _intent_of(event: AuditEvent) -> int:
    value = event.params.get("intent", 0)
    return value if isinstance(value, int) else 0


def _step(outcome: AuditEvent, intent: AuditEvent | None) -> Step:
    params: dict[str, Any] = {**(intent.params if intent else {}), **outcome.params}
    subject = str(
        params.get("label")
        or params.get("operator")
        or params.get("policy")
        or params.get("finding")
        or outcome.key_id
    )
    check = str(params.get("kcv") or params.get("check") or params.get("fingerprint", ""))[:23]
    approvers = ", ".join(str(a) for a in params.get("approvers", []) or [])
    note = str(params.get("message") or params.get("reason") or "")
    if params.get("custodians"):
        note = f"components held by {', '.join(map(str, params['custodians']))}"
    return Step(
        outcome.seq,
        outcome.ts,
        outcome.action,
        outcome.outcome,
        subject,
        check,
        approvers,
        note[:120],
    )
