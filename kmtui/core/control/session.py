"""The token session of the workstation: log-in with two PIN halves or the token's protected
path (refusing a rolled-back trail), log-out, and setting the user PIN from two halves."""

from __future__ import annotations

import threading
from contextlib import suppress

from kmtui.core import errors
from kmtui.core.audit.anchors import TAMPERED_HINT, Anchors
from kmtui.core.audit.log import AuditLog
from kmtui.core.audit.seals import Seals
from kmtui.core.control.origin import session_context
from kmtui.core.control.pin import Credential, PinHalves, ProtectedPath, audit_params
from kmtui.core.models import Outcome, TokenInfo
from kmtui.core.registry.seals import REGISTRY
from kmtui.core.token.session import Hsm


class Session:
    """One log-in or log-out at a time: the idle lock's log-out and the app closing can overlap."""

    def __init__(self, hsm: Hsm, audit: AuditLog, anchors: Anchors, seals: Seals) -> None:
        self._hsm = hsm
        self._audit = audit
        self._anchors = anchors
        self._seals = seals
        self._lock = threading.Lock()

    def login(self, credential: Credential, actor: str = "console") -> TokenInfo:
        """Log in, then refuse a rolled-back trail before anything else runs; all audited, with
        the names of the two custodians who entered the halves."""
        with self._lock:
            info = self._open(credential, actor)
            try:
                return self._after_login(info, actor, audit_params(credential))
            except BaseException:  # refused (rolled-back trail, unwritable audit): no session
                if self._hsm.logged_in:
                    self._hsm.logout()
                raise

    def _open(self, credential: Credential, actor: str) -> TokenInfo:
        try:
            if isinstance(credential, ProtectedPath):
                return self._hsm.login_protected()
            return self._hsm.login(credential.pin())
        except errors.HsmError as exc:
            params: dict[str, object] = {
                **session_context(),
                **audit_params(credential),
                "error": type(exc).__name__,
            }
            if isinstance(exc, errors.PinIncorrect):
                with suppress(errors.HsmError):  # what the token's counter says, when it answers
                    params["token_flags"] = list(self._hsm.pin_flags())
            self._audit.append("token.login", actor=actor, outcome=Outcome.FAILURE, params=params)
            raise

    def _after_login(self, info: TokenInfo, actor: str, who: dict[str, object]) -> TokenInfo:
        rollback = self._anchors.check_head()
        foreign = "" if rollback else self._pin_problem()
        forged = "" if rollback or foreign else self._anchors.forged()
        problem = rollback or foreign or forged
        if problem:
            self._hsm.logout()  # first: nothing may mirror this database's head on the token
            self._audit.append(
                "audit.head-mismatch",
                actor=actor,
                outcome=Outcome.FAILURE,
                params={**session_context(), "problem": problem},
            )
            title = (
                "AUDIT TRAIL ROLLED BACK OR CUT SHORT"
                if rollback
                else "NOT THIS TOKEN"
                if foreign
                else "AUDIT TRAIL FORGED"
            )
            raise errors.AuditTampered(f"{title}: {problem}.", TAMPERED_HINT)
        self._audit.append(
            "token.login",
            actor=actor,
            outcome=Outcome.SUCCESS,
            params={**session_context(), **who, "token": info.label, "serial": info.serial},
        )
        self._record_profile(actor, info)
        self._anchors.public_key()
        self._seals.start(actor)
        self._seals.require([REGISTRY], actor=actor)
        self._anchors.sync()
        return info

    def _record_profile(self, actor: str, info: TokenInfo) -> None:
        """The token's probed profile in the trail, whenever it differs from the last one
        recorded for this token (its first log-in, a firmware or module change)."""
        profile = self._hsm.profile.as_dict()
        for event in self._audit.events(action="token.profile", limit=20):
            if event.params.get("serial") == info.serial and event.params.get("token") == (
                info.label
            ):
                if event.params.get("profile") == profile:
                    return
                break
        self._audit.append(
            "token.profile",
            actor=actor,
            outcome=Outcome.SUCCESS,
            params={"token": info.label, "serial": info.serial, "profile": profile},
        )

    def _pin_problem(self) -> str:
        """'' when the token serves this registry (pinning it at the token's first log-in)."""
        registry = self._anchors.registry_id()
        pinned = self._hsm.signer.pinned()
        if not pinned:
            self._hsm.signer.pin(registry)
            return ""
        if registry in pinned and len(pinned) == 1:
            return ""
        return (
            f"this token serves registry {', '.join(pinned)}, and this database is registry "
            f"{registry}: a database made elsewhere, or the registry id was changed"
        )

    def logout(self, actor: str = "console", reason: str = "") -> None:
        """Sign a checkpoint for the session, mirror the head, then log out (once, when two
        callers race)."""
        with self._lock:
            if not self._hsm.logged_in:
                return
            try:
                end = self._audit.append(
                    "token.logout", actor=actor, outcome=Outcome.SUCCESS, params={"reason": reason}
                )
                self._anchors.checkpoint("session end", at=end.seq)  # `audit verify` needs it
                self._anchors.sync()
            finally:  # a trail that cannot be written must not keep the token open
                self._hsm.logout()

    def set_user_pin(self, initial_pin: str, halves: PinHalves, actor: str = "init") -> None:
        """Replace the PIN the token was initialised with by the two halves (C_SetPIN); the trail
        records who hold the halves (names only), or the token's refusal."""
        halves.for_new_pin()
        with self._lock:
            who = {**session_context(), **audit_params(halves)}
            try:
                self._hsm.set_user_pin(initial_pin, halves.pin())
            except errors.KmtuiError as exc:
                self._audit.append(
                    "token.set-pin",
                    actor=actor,
                    outcome=Outcome.FAILURE,
                    params={**who, "error": type(exc).__name__},
                )
                raise
            self._audit.append("token.set-pin", actor=actor, outcome=Outcome.SUCCESS, params=who)

    def user_pin_set(self) -> bool:
        """Has this workstation set the token's user PIN from halves (the trail says so)?"""
        return bool(self._audit.events(limit=1, action="token.set-pin", outcome=Outcome.SUCCESS))
