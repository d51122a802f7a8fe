"""The process tests/e2e/test_crash.py kills: run one key operation and SIGKILL itself at a step
boundary ("operate"), or start afresh after such a death and reconcile ("reconcile").

The request arrives as JSON on stdin (it holds the PIN and the operators' TOTP seeds, which never go
on argv). Nothing in kmtui is changed: the boundaries are found by wrapping kmtui's own methods in
this process only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kmtui.core.audit.log import AuditLog
from kmtui.core.control import origin
from kmtui.core.control.gate import Gate
from kmtui.core.control.operations import ApprovalInput, OpKind
from kmtui.core.control.pin import PinHalves
from kmtui.core.control.totp import current_code
from kmtui.core.registry.db import Store
from kmtui.core.token import templates
from kmtui.core.token.keygen import Keygen
from kmtui.core.token.objects import Objects
from kmtui.core.token.session import Hsm
from kmtui.service import Prepared, Workstation

KINDS = {"create": OpKind.KEY_CREATE, "rotate": OpKind.KEY_ROTATE, "destroy": OpKind.KEY_DESTROY}
HSM_STEP: dict[str, tuple[type, str]] = {
    "create": (Keygen, "generate"),
    "rotate": (Keygen, "generate"),
    "destroy": (Objects, "destroy"),
}


class Clock:
    """The operators' authenticators and the verifier share this clock (one step per round)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Child:
    def __init__(self, request: dict[str, Any]) -> None:
        self.request = request
        hsm = Hsm(request["module"], token_label=request["token"], softhsm2_conf=request["conf"])
        self.store = Store.open(Path(request["db"]))
        self.clock = Clock(float(request["clock"]))
        self.ws = Workstation.assemble(hsm, self.store, clock=self.clock)
        # Login is per process, and this is how kmtui starts: the audit head is checked first.
        self.ws.login(PinHalves.of(request["halves"]), actor="crash-test")

    def codes(self) -> list[ApprovalInput]:
        self.clock.now += 30
        return [
            ApprovalInput(name, current_code(seed, self.clock.now))
            for name, seed in sorted(self.request["seeds"].items())
        ]

    def prepare(self) -> Prepared:
        op, r = self.request["op"], self.request
        if op == "create":
            return self.ws.prepare_create(
                label=r["label"], algorithm=r["algorithm"], purpose=r["purpose"]
            )
        return self.ws.prepare(KINDS[op], r["key_id"])

    # -- operate: die at one boundary ----------------------------------------------------------

    def die(self, boundary: str) -> None:
        """Say where we are (and whether a transaction is open), then SIGKILL this process."""
        note = {"boundary": boundary, "in_transaction": self.store.conn.in_transaction}
        sys.stderr.write(json.dumps(note) + "\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def arm(self, boundary: str, kind: OpKind) -> None:
        """Wrap the kmtui method whose return (or call) marks `boundary`."""
        part, step_name = HSM_STEP[self.request["op"]]
        real_step: Callable[..., Any] = getattr(part, step_name)
        calls = {"n": 0}
        die_after = int(self.request.get("die_after_calls", 1))

        def step(owner: Any, *args: Any, **kwargs: Any) -> Any:
            if boundary == "intent-committed":
                self.die(boundary)  # before the token is touched
            value = real_step(owner, *args, **kwargs)
            calls["n"] += 1
            if boundary in ("hsm-partial", "hsm-done") and calls["n"] == die_after:
                self.die(boundary)
            return value

        setattr(part, step_name, step)

        real_append = AuditLog.append

        def append(log: AuditLog, action: str, **kwargs: Any) -> Any:
            event = real_append(log, action, **kwargs)
            if boundary == "intent-written" and event.outcome == "intent":
                self.die(boundary)  # appended inside the intent's transaction, not committed
            if boundary == "outcome-written" and (event.action, event.outcome) == (
                str(kind),
                "success",
            ):
                self.die(boundary)  # registry writes and outcome appended, COMMIT not yet run
            return event

        AuditLog.append = append  # type: ignore[method-assign]

        real_execute = Gate.execute

        def execute(gate: Gate, *args: Any, **kwargs: Any) -> Any:
            result = real_execute(gate, *args, **kwargs)
            if boundary == "outcome-committed":
                self.die(boundary)
            return result

        Gate.execute = execute  # type: ignore[method-assign]

    def operate(self) -> None:
        prepared = self.prepare()
        op = prepared.operation
        print(json.dumps({"key_id": op.key_id, "digest": op.digest}), flush=True)
        codes = self.codes()
        self.arm(self.request["boundary"], op.kind)
        self.ws.run(prepared, codes)
        print(json.dumps({"finished": True}), flush=True)  # the boundary was never reached

    # -- reconcile: the restart ----------------------------------------------------------------

    def token_view(self) -> dict[str, Any]:
        """For each watched CKA_ID: the classes of the objects carrying it and its check value."""
        watched = {bytes.fromhex(h) for h in self.request["watch"]}
        view: dict[str, Any] = {h: {"classes": [], "check": ""} for h in self.request["watch"]}
        for obj in self.ws.hsm.objects.scan():
            if obj.cka_id in watched:
                view[obj.cka_id.hex()]["classes"].append(obj.object_class)
        symmetric = templates.ALGORITHMS[self.request["algorithm"]].symmetric
        for hexid, entry in view.items():
            if entry["classes"]:
                cka = bytes.fromhex(hexid)
                entry["check"] = (
                    self.ws.hsm.objects.kcv(cka)
                    if symmetric
                    else self.ws.hsm.objects.fingerprint(cka)
                )
            entry["classes"].sort()
        return view

    def reconcile(self) -> None:
        calls: list[str] = []
        for part, name in ((Keygen, "generate"), (Objects, "destroy")):
            real: Callable[..., Any] = getattr(part, name)

            def counted(owner: Any, *args: Any, _real: Any = real, _name: str = name) -> Any:
                calls.append(_name)
                return _real(owner, *args)

            setattr(part, name, counted)
        out: dict[str, Any] = {"open_before": len(self.ws.reconciler.open_intents())}
        out["open_by_scan_before"] = len(self.ws.store.keys.open_intents_by_scan())
        out["first"] = self.ws.reconciler.run().as_dict()
        out["second"] = self.ws.reconciler.run().as_dict()
        out["open_after"] = len(self.ws.reconciler.open_intents())
        out["token"] = self.token_view()
        out["hsm_calls"] = calls
        print(json.dumps(out), flush=True)

    def retry(self) -> None:
        """What a finding asks the custodian to do: run the operation again, freshly approved."""
        result = self.ws.run(self.prepare(), self.codes())
        out = {
            "result": {k: v for k, v in result.as_dict().items() if k != "final_checks"},
            "report": self.ws.reconciler.run().as_dict(),
            "token": self.token_view(),
        }
        print(json.dumps(out), flush=True)


def main() -> None:
    request = json.loads(sys.stdin.read())
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.origin_tree import console

    # destroy is kept to the console: this child sits at the stand-in one, wherever the suite runs
    origin.ROOTS = console(Path(request["db"]).parent / f"console-{os.getpid()}", os.getpid())
    child = Child(request)
    {"operate": child.operate, "reconcile": child.reconcile, "retry": child.retry}[
        request["mode"]
    ]()


if __name__ == "__main__":
    main()
