"""Each custodian flow driven through the TUI on the real token, approvals and all."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pyotp
from textual.widgets import DataTable, Input, Select, Static, TextArea

from kmtui.config import Config, UiConfig
from kmtui.core.control.operations import OpKind
from kmtui.core.control.totp import Enrollment, current_code
from kmtui.core.models import KeyState, OperatorState, iso, utcnow
from kmtui.ui.screens.approval import ApprovalScreen
from kmtui.ui.screens.enrolment import EnrolmentScreen
from kmtui.ui.screens.forms import ChoiceScreen, CreateKeyScreen, NamedChoiceScreen
from kmtui.ui.screens.login import LoginScreen
from kmtui.ui.screens.main import MainScreen
from kmtui.ui.widgets.paged_table import PagedTable
from tests.conftest import SoftHsm, Team, sealed_edit
from tests.ui.helpers import SIZE, app_for, approve, keys_loaded, main_ready, text_of, until


async def test_create_a_key_through_the_form_and_two_approvals(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("n")
        await until(
            pilot, lambda: isinstance(app.screen, CreateKeyScreen) and app.screen.query("Button")
        )
        form = app.screen
        form.query_one("#label", Input).value = "orders-dek"
        form.query_one("#purpose", Select).value = "encrypt"
        await pilot.pause()
        form.query_one("#algorithm", Select).value = "AES-128"
        await pilot.click("#ok")
        await approve(pilot, team.codes("alice", "bob"))
        table = await keys_loaded(pilot, 1)
        assert table.get_row_at(0)[0].plain == "orders-dek"
    (key,) = team.ws.store.keys.find(label="orders-dek")
    assert key.algorithm == "AES-128" and key.state == KeyState.ACTIVE


async def test_rotate_suspend_resume_revoke_and_schedule_then_cancel_destruction(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    key = ws.create_key(label="rotating", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("o")
        await approve(pilot, team.codes("alice", "bob"))
        assert ws.get_key(key.id).current_version == 2

        await pilot.press("u")  # suspend needs no approvals under the default policy
        await approve(pilot, [])
        assert ws.get_key(key.id).state == KeyState.SUSPENDED
        await pilot.press("u")
        await approve(pilot, [])
        assert ws.get_key(key.id).state == KeyState.ACTIVE

        await pilot.press("x")
        await approve(pilot, team.codes("alice", "carol"))
        assert ws.get_key(key.id).state == KeyState.DESTROY_SCHEDULED
        table = app.screen.query_one("#keys", PagedTable)
        due = (ws.get_key(key.id).destroy_after or "")[:10]
        await until(pilot, lambda: table.get_row_at(0)[2].plain == f"✖ on {due}", "the marker")
        await pilot.press("x")
        await approve(pilot, team.codes("alice", "bob"))
        assert ws.get_key(key.id).state == KeyState.ACTIVE

        await pilot.press("v")
        await until(
            pilot, lambda: isinstance(app.screen, ChoiceScreen) and app.screen.query("Button")
        )
        app.screen.query_one(Select).value = "superseded"
        await pilot.click("#ok")
        await approve(pilot, team.codes("bob", "carol"))
        assert ws.get_key(key.id).state == KeyState.DEACTIVATED
        await until(pilot, lambda: table.get_row_at(0)[1].plain == "deactivated")


async def test_wrong_codes_show_per_approver_results_and_change_nothing(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    key = ws.create_key(label="kept", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("o")
        await until(
            pilot, lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("Button")
        )
        dialog = app.screen
        good = team.codes("alice")[0]
        wrong = "000000" if good.code != "000000" else "111111"
        for i, (name, code) in enumerate([("alice", good.code), ("bob", wrong)]):
            dialog.query_one(f"#name-{i}", Input).value = name
            dialog.query_one(f"#code-{i}", Input).value = code
        await pilot.click("#approve")
        result = dialog.query_one("#result-1", Static)
        await until(pilot, lambda: "wrong code" in str(result.render()), "bob's refusal")
        assert "accepted" in str(dialog.query_one("#result-0", Static).render())
        assert app.screen is dialog
        await pilot.press("escape")
    assert ws.get_key(key.id).current_version == 1


async def test_destroy_waits_for_its_period_then_asks_for_the_label_to_be_typed(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    key = ws.create_key(label="doomed", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    ws.run(ws.prepare(OpKind.KEY_SCHEDULE_DESTROY, key.id), team.codes("alice", "bob"))
    app = app_for(ws, tmp_path, softhsm_token.halves)
    seen: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kw: (seen.append(str(message)), notify(message, **kw))[1]
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await keys_loaded(pilot, 1)
        await pilot.press("D")
        await until(pilot, lambda: any("only after" in s for s in seen), "the refusal")
        assert isinstance(app.screen, MainScreen)
        past = iso(utcnow() - timedelta(days=1))
        sealed_edit(
            ws, f"key:{key.id}", "UPDATE keys SET destroy_after = ? WHERE id = ?", (past, key.id)
        )
        await pilot.press("D")
        await until(
            pilot, lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("Button")
        )
        dialog = app.screen
        dialog.query_one("#confirm-label", Input).value = "doomed-not"
        await pilot.click("#approve")
        assert "does not match" in str(dialog.query_one("#approval-error", Static).render())
        await approve(pilot, team.codes("alice", "bob"), label="doomed")
    assert ws.get_key(key.id).state == KeyState.DESTROYED


async def test_enrol_an_operator_shows_the_qr_code_and_confirms_the_first_code(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    enrolled: list[Enrollment] = []
    begin = ws.operators.begin_enrollment

    def capture(name: str, role: str) -> Enrollment:  # the test stands in for dave's phone
        enrolled.append(begin(name, role))
        return enrolled[-1]

    ws.operators.begin_enrollment = capture  # type: ignore[method-assign]
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("4")
        await pilot.pause()
        await pilot.press("n")
        await until(
            pilot, lambda: isinstance(app.screen, NamedChoiceScreen) and app.screen.query("Button")
        )
        app.screen.query_one("#name", Input).value = "dave"
        await pilot.click("#ok")
        await approve(pilot, team.codes("alice", "bob"))
        await until(
            pilot,
            lambda: isinstance(app.screen, EnrolmentScreen) and app.screen.query("Button"),
            "the QR code",
        )
        qr = str(app.screen.query_one("#qr", Static).render())
        assert "█" in qr or "▀" in qr
        seed = pyotp.parse_uri(enrolled[0].otpauth_uri).secret
        team.clock.advance(30)
        app.screen.query_one("#first-code", Input).value = current_code(seed, team.clock())
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the confirmation")
    assert ws.operators.get("dave").state == OperatorState.ACTIVE


async def test_audit_filter_narrows_the_trail_by_term_and_time_and_a_row_opens_its_key(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    key = ws.create_key(label="audited", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("3")
        table = app.screen.query_one("#audit", PagedTable)
        await until(pilot, lambda: table.row_count > 5, "the trail")
        first = int(table.get_row_at(0)[0].plain)
        assert first == max(int(table.get_row_at(i)[0].plain) for i in range(table.row_count))
        app.screen.query_one("#audit-filter", Input).value = "action:key.create outcome:success"
        await until(pilot, lambda: table.row_count == 1, "the filtered trail")
        assert table.get_row_at(0)[3].plain == "key.create"
        table.focus()
        table.move_cursor(row=0)
        shown = app.screen.query_one("#event-detail", Static)
        await until(pilot, lambda: "key.create success" in str(shown.render()), "the event detail")
        assert f"key audited ({key.id})" in str(shown.render())
        box = app.screen.query_one("#audit-filter", Input)
        box.value = "action:no.such.action"
        await until(pilot, lambda: table.row_count == 0, "an empty trail")
        assert str(shown.render()) == ""  # no detail of an event no longer listed
        today = utcnow().date()
        tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
        box.value = f"since:{tomorrow.isoformat()}"
        await until(pilot, lambda: table.row_count == 0, "nothing after tomorrow")
        box.value = f"until:{yesterday.isoformat()}"
        await until(pilot, lambda: table.row_count == 0, "nothing before yesterday")
        box.value = f"since:{today.isoformat()} until:{today.isoformat()}"
        await until(
            pilot, lambda: table.row_count == len(ws.audit.events(limit=500)), "today's events"
        )
        box.value = f"since:{today.isoformat()} action:key.create outcome:success"
        await until(pilot, lambda: table.row_count == 1, "a range with other terms")
        app.screen.query_one("#audit-filter", Input).value = "op:carol"
        await until(
            pilot,
            lambda: (
                table.row_count
                and all("carol" in table.get_row_at(i)[2].plain for i in range(table.row_count))
            ),
            "carol's events",
        )
        app.screen.query_one("#audit-filter", Input).value = f"key:{key.id} action:key.create"
        await until(
            pilot,
            lambda: (
                [table.get_row_at(i)[4].plain for i in range(table.row_count)]
                == ["success", "intent"]
            ),
            "the key's intent and outcome",
        )
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.screen.__class__.__name__ == "KeyDetailScreen")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "back to the trail")
        assert table.row_count == 2


async def test_verify_now_reports_an_intact_chain(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    app = app_for(team.ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        await pilot.press("3")
        await pilot.pause()
        await pilot.press("V")
        chain = app.screen.query_one("#chain", Static)
        await until(pilot, lambda: "chain intact" in str(chain.render()), "verification")


async def test_idle_lock_hides_the_workstation_logs_out_and_two_custodians_halves_unlock(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    app = app_for(ws, tmp_path, softhsm_token.halves)
    (alice, first), (bob, second) = softhsm_token.pairs
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        app.last_activity = time.monotonic() - app.idle_seconds - 1
        await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the lock screen")
        await until(pilot, lambda: not ws.hsm.logged_in, "the token log-out")
        assert app.screen.locked
        assert not app.screen.query("#keys")  # nothing of the workstation is on the screen
        seq = ws.audit.events(limit=1)[0].seq
        app.screen.query_one("#holder-1", Input).focus()
        await pilot.press(*alice, "tab", *first, "tab", *bob, "tab", *second)
        assert app.screen.query_one("#half-2", Input).password
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MainScreen), "the unlocked screen")
        assert ws.hsm.logged_in and not app.locked
    reasons = [e.params.get("reason") for e in ws.audit.events(action="token.logout")]
    assert "idle lock" in reasons
    unlock = ws.audit.events(after_seq=seq, newest_first=False, action="token.login")[0]
    assert (unlock.outcome, unlock.params["custodians"]) == ("success", [alice, bob])


async def test_a_policy_change_shortens_the_idle_lock_and_the_status_line_names_who_approved(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=(140, 30)) as pilot:
        main = await main_ready(pilot)
        assert app.idle_seconds == 15 * 60 and app.idle_source == "configuration"
        status = main.query_one("#status", Static)
        await until(pilot, lambda: "session 0m" in str(status.render()), "the session")
        assert "alice" not in str(status.render())
        await pilot.press("2")
        await until(pilot, lambda: main.query_one("#policies", DataTable).row_count > 0)
        name = ws.store.policies.all()[0].name
        await pilot.press("e")
        await until(pilot, lambda: app.screen.query("#rules-json"), "the policy editor")
        editor = app.screen.query_one("#rules-json", TextArea)
        editor.text = json.dumps({**ws.get_policy(name).rules, "idle_lock_minutes": 2})
        await pilot.click("#ok")
        await approve(pilot, team.codes("alice", "bob"))
        await until(pilot, lambda: app.idle_seconds == 120, "the shorter idle lock")
        assert app.idle_source == f"policy {name}"
        assert ws.rules(name).idle_lock_minutes == 2
        await until(pilot, lambda: "session 0m: alice, bob" in str(status.render()), "present")
        assert "lock in 1:" in str(status.render()) or "lock in 2:00" in str(status.render())
        # The shorter lock is the one that fires.
        app.last_activity = time.monotonic() - 121
        await until(pilot, lambda: isinstance(app.screen, LoginScreen), "the lock screen")


async def test_the_approval_dialog_of_a_policy_change_shows_each_touched_rule_old_to_new(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    ws.run(
        ws.prepare_policy_change("default", {"quorum": {"key.revoke": 3}}),
        team.codes("alice", "bob"),
    )
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        main = await main_ready(pilot)
        await pilot.press("2")
        table = main.query_one("#policies", DataTable)
        await until(pilot, lambda: table.row_count > 0)
        table.move_cursor(row=table.get_row_index("default"))
        await pilot.press("e")
        await until(pilot, lambda: app.screen.query("#rules-json"), "the policy editor")
        editor = app.screen.query_one("#rules-json", TextArea)
        editor.text = json.dumps({"quorum": {"key.create": 3}, "rotation_days": 90})
        await pilot.click("#ok")
        await until(
            pilot,
            lambda: isinstance(app.screen, ApprovalScreen) and app.screen.query("#approve"),
            "the approval dialog",
        )
        shown = text_of(app.screen.query_one("#approval-changes", Static))
        assert "quorum key.create: 2 (default) → 3" in shown
        assert "quorum key.revoke: 3 → 2 (default)" in shown
        assert "rotation_days: 365 (default) → 90" in shown
        assert "key.destroy" not in shown  # untouched rules are not listed
        await approve(pilot, team.codes("alice", "bob"))
    assert ws.rules("default").requirement(OpKind.KEY_REVOKE).quorum == 2
    assert ws.rules("default").requirement(OpKind.KEY_CREATE).quorum == 3


async def test_a_policy_cannot_lengthen_the_configured_idle_lock(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    name = ws.store.policies.all()[0].name
    rules = {**ws.get_policy(name).rules, "idle_lock_minutes": 200}
    ws.run(ws.prepare_policy_change(name, rules), team.codes("alice", "bob"))
    app = app_for(ws, tmp_path, softhsm_token.halves, Config(ui=UiConfig(idle_lock_minutes=5)))
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        assert app.idle_seconds == 5 * 60 and app.idle_source == "configuration"


async def test_self_check_reports_each_check_for_a_secret_and_a_signing_key(
    team: Team, softhsm_token: SoftHsm, tmp_path: Path
) -> None:
    ws = team.ws
    dek = ws.create_key(label="a-dek", algorithm="AES-256", approvals=team.codes("alice", "bob"))
    signer = ws.create_key(
        label="b-signer", algorithm="EC-P256", purpose="sign", approvals=team.codes("alice", "bob")
    )
    app = app_for(ws, tmp_path, softhsm_token.halves)
    async with app.run_test(size=SIZE) as pilot:
        await main_ready(pilot)
        table = await keys_loaded(pilot, 2)
        for row, key, round_trip in ((0, dek, "encrypt-decrypt"), (1, signer, "sign-verify")):
            table.focus()
            table.move_cursor(row=row)
            await pilot.press("c")
            await approve(pilot, [])  # a self-check changes nothing: no approvals asked
            shown = f"Self-check of {key.label!r}"
            await until(
                pilot,
                lambda shown=shown: any(shown in str(n.message) for n in app._notifications),
                "the self-check report",
            )
            message = next(str(n.message) for n in app._notifications if shown in str(n.message))
            assert f"{round_trip} pass" in message and "registry-match pass" in message
            fingerprint = key.current.kcv or key.current.fingerprint
            assert fingerprint in message  # the KCV/fingerprint read now, as registered
    checks = ws.audit.events(action="key.selfcheck")
    assert {e.key_id for e in checks if e.outcome == "success"} == {dek.id, signer.id}
