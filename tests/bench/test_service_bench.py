"""What the service layer costs, against raw PKCS#11, in the same run (issue 3's benchmark).

Run with `make bench` (never in CI).

1. AES-256 generate through the gate (`Workstation.create_key`: policy check, intent event, token
   call with kmtui's template and read-back, registry rows and their seals, outcome event, the
   audit head moved on the token) with two operators' TOTP approvals, as every key creation has
   them (no policy goes below two), against a raw python-pkcs11 AES-256 keygen on the same token.
   Rounds alternate raw/service so drift hits both alike; medians are compared. Goal: at most 1.5x
   (asserted).
2. `kmtui keys list --json` with 10,000 keys in the registry, each command timed as a
   subprocess's wall time (median of 3 runs, after one untimed run of each), against:
   - the headline, `pkcs11-tool --list-objects` on a token holding the same 10,000 key objects.
     Not like with like: kmtui reads its registry where the tool scans the token, which is the
     point of the registry. Goal: kmtui under 0.5x (asserted).
   - the same registry query run raw: a Python child with sqlite3 that runs the integrity check
     kmtui runs on every command's open, the same SELECTs and prints the same JSON (checked equal).
     That is the limit kmtui can reach; its ratio to it must stay within SQLITE_BOUND. The raw
     query without the integrity check is timed too, to show what that check costs.

The 10,000 objects go on a SoftHSM2 token of their own in a temp dir: SoftHSM reads SOFTHSM2_CONF
at C_Initialize and this process has already loaded the suite's token, so the population and every
timed command run in child processes that carry the bench token's SOFTHSM2_CONF. Making the
10,000 token objects takes minutes: SoftHSM2 keeps one file per object and revisits its token
directory after every change, so each new object costs more than the one before.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType

from kmtui import config, paths
from kmtui.core.control import policy
from kmtui.core.models import Policy, iso, new_key_id, utcnow
from kmtui.core.registry.db import Store
from kmtui.core.token import softhsm
from kmtui.core.token.session import default_softhsm_module
from tests.conftest import Team

pytestmark = pytest.mark.bench

ROUNDS = 40
KEYS = 10_000
RUNS = 3
BENCH_TOKEN = "kmtui-bench"
# The gate's goal against a raw keygen (issue 3). Not met today: 1.9-2.0x measured, of which the
# audit head written to the token after every operation is ~3 ms of a ~13 ms create.
SERVICE_BOUND = 1.5
TOKEN_SCAN_BOUND = 0.5  # keys list against a token scan: the registry answers without one
# keys list against the raw sqlite3 child: kmtui also starts its CLI (its imports alone take
# ~0.4 s, `kmtui --version`), opens the store through its migration and policy checks and builds
# a Key per row; measured 1.7-1.8x on a shared two-core machine, bounded at 2.5x.
SQLITE_BOUND = 2.5


def _bench(row: dict[str, Any]) -> None:
    print("BENCH " + json.dumps(row), flush=True)


# -- 1. service-level generate against raw keygen --------------------------------------------


def _timed_ms(fn: Callable[[], Any], samples: list[float]) -> None:
    start = time.perf_counter()
    fn()
    samples.append((time.perf_counter() - start) * 1e3)


def test_bench_service_aes256_generate_against_raw_python_pkcs11(team: Team) -> None:
    ws, hsm = team.ws, team.ws.hsm
    # The process is logged in through `hsm`; this raw session shares that login. It is used only
    # while the PKCS#11 thread is idle, so calls never overlap.
    raw = pkcs11.lib(hsm.module).get_token(token_label=hsm.token_label).open(rw=True)
    made: list[str] = []

    def raw_aes() -> None:
        raw.generate_key(
            KeyType.AES,
            256,
            store=True,
            id=new_key_id().encode(),
            label="raw",
            capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )

    def service() -> None:
        key = ws.create_key(
            label=f"bench-{len(made)}",
            algorithm="AES-256",
            purpose="encrypt",
            approvals=team.codes("alice", "bob"),
            actor="bench",
        )
        made.append(key.id)

    raw_ms: list[float] = []
    service_ms: list[float] = []
    try:
        for _ in range(3):  # warm-up
            raw_aes()
            service()
        for _ in range(ROUNDS):
            _timed_ms(raw_aes, raw_ms)
            _timed_ms(service, service_ms)
    finally:
        raw.close()
    r, s = statistics.median(raw_ms), statistics.median(service_ms)
    _bench(
        {
            "op": "AES-256 generate: Workstation.create_key vs raw python-pkcs11",
            "rounds": ROUNDS,
            "raw_ms": round(r, 2),
            "service_ms": round(s, 2),
            "ratio": round(s / r, 3),
            "bound": SERVICE_BOUND,
            "within": s / r <= SERVICE_BOUND,
        }
    )
    # Every service call went the whole way: an active key, an intent and a success outcome.
    assert len(made) == ROUNDS + 3
    for key_id in made:
        assert str(ws.get_key(key_id).state) == "active"
        outcomes = [e.outcome for e in ws.audit.events(key_id=key_id, action="key.create")]
        assert sorted(outcomes) == ["intent", "success"]
    assert s / r <= SERVICE_BOUND, f"create_key {s / r:.2f}x raw keygen > {SERVICE_BOUND}x"


# -- 2. `kmtui keys list --json` against `pkcs11-tool --list-objects`, 10,000 keys -------------

_POPULATE = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

req = json.loads(sys.stdin.read())
token = pkcs11.lib(req["module"]).get_token(token_label=req["label"])
with token.open(rw=True, user_pin=req["pin"]) as session:
    for key_id, label in req["keys"]:
        session.generate_key(
            KeyType.AES,
            128,
            store=True,  # token objects, as kmtui makes them
            id=f"kmtui:{key_id}:1".encode("ascii"),
            label=label,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
    # The KCVs in one pass at the end: SoftHSM revisits its token directory on every call after
    # a change, so a read after each generate would nearly double the time.
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
        attrs = obj.get_attributes([Attribute.ID, Attribute.CHECK_VALUE])
        key_id = bytes(attrs[Attribute.ID]).decode("ascii").split(":")[1]
        print(key_id, bytes(attrs[Attribute.CHECK_VALUE])[:3].hex().upper())
"""


_RAW_LIST = r"""
import json, sqlite3, sys
from urllib.parse import quote

database, token, check = sys.argv[1], sys.argv[2], sys.argv[3] == "check"
conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
if check:
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
versions = {}
for row in conn.execute(
    "SELECT key_id, version, state, cka_id, token_serial, kcv, fingerprint, created_at "
    "FROM key_versions ORDER BY key_id, version"
):
    versions.setdefault(row[0], []).append(row[1:])
listing = []
for (key_id, label, state, algorithm, purpose, policy, exportable, current, created, activated,
     due, destroy_after, reason, compromised, tags) in conn.execute(
    "SELECT id, label, state, algorithm, purpose, policy, exportable, current_version, "
    "created_at, activated_at, rotation_due_at, destroy_after, revocation_reason, "
    "compromised_at, tags FROM keys ORDER BY label COLLATE NOCASE, id"
):
    if algorithm.startswith(("AES", "HMAC")):
        kind = "secret-key"
    else:
        kind = "public" if "recipient" in json.loads(tags) else "private"
    mine = versions.get(key_id, [])
    listing.append({
        "id": key_id, "label": label, "state": state, "algorithm": algorithm,
        "purpose": purpose, "policy": policy or "", "exportable": bool(exportable),
        "kcv": next((v[4] for v in mine if v[0] == current), ""),
        "current_version": current, "created_at": created, "activated_at": activated or "",
        "rotation_due_at": due or "", "destroy_after": destroy_after or "",
        "revocation_reason": reason or "", "compromised_at": compromised or "",
        "versions": [
            {
                "version": version, "state": v_state,
                **({"kcv": kcv} if kcv else {"fingerprint": fingerprint}),
                "pkcs11_uri": "pkcs11:" + ";".join((
                    f"token={quote(token, safe='-._~')}",
                    f"serial={quote(serial, safe='-._~')}",
                    f"id={quote(bytes(cka_id), safe='-._~')}",
                    f"object={quote(label, safe='-._~')}",
                    f"type={kind}",
                )),
                "created_at": v_created,
            }
            for version, v_state, cka_id, serial, kcv, fingerprint, v_created in mine
        ],
    })
print(json.dumps(listing, indent=2, sort_keys=True))
"""


def _pkcs11_tool() -> str | None:
    """pkcs11-tool (Debian's opensc), installed with apt-get when missing and we are root."""
    found = shutil.which("pkcs11-tool")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "opensc"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(install, env=env, capture_output=True, check=False)
    return shutil.which("pkcs11-tool")


def _registry(p: paths.Paths, serial: str, keys: list[tuple[str, str, str]]) -> None:
    """kmtui's schema and shipped policies via Store, then the rows with executemany."""
    store = Store.open(p.database)
    for shipped in policy.DEFAULT_POLICIES:
        store.policies.add(Policy(shipped.name, shipped.description, shipped.rules, iso(utcnow())))
    store.close()
    now = iso(utcnow())
    conn = sqlite3.connect(p.database)
    with conn:
        conn.executemany(
            "INSERT INTO keys (id, label, algorithm, purpose, policy, state, exportable, "
            "current_version, owner, notes, tags, created_at, updated_at, activated_at) "
            "VALUES (?, ?, 'AES-128', 'encrypt', 'default', 'active', 0, 1, '', '', '[]', ?, ?, ?)",
            [(key_id, label, now, now, now) for key_id, label, _ in keys],
        )
        conn.executemany(
            "INSERT INTO key_versions (key_id, version, state, cka_id, token_serial, kcv, "
            "fingerprint, created_at) VALUES (?, 1, 'active', ?, ?, ?, '', ?)",
            [
                (key_id, f"kmtui:{key_id}:1".encode("ascii"), serial, kcv, now)
                for key_id, _, kcv in keys
            ],
        )
    conn.close()


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    return elapsed, proc.stdout


def test_bench_keys_list_json_against_pkcs11_tool_list_objects_with_10000_keys(
    tmp_path: Path,
) -> None:
    module = default_softhsm_module()
    tool = _pkcs11_tool()
    if tool is None:
        print(
            "BENCH pkcs11-tool is not installed and `apt-get install -y opensc` could not install "
            "it (needs root and apt): the token-scan headline is left out, the sqlite3 "
            "comparison runs.",
            flush=True,
        )

    conf = softhsm.write_conf(tmp_path / "softhsm")
    pin, so_pin = secrets.token_hex(8), secrets.token_hex(16)
    serial = softhsm.init_token(module, conf, BENCH_TOKEN, so_pin, pin)
    env = {k: v for k, v in os.environ.items() if k != "KMTUI_HOME"}
    env["SOFTHSM2_CONF"] = str(conf)

    wanted = [(new_key_id(), f"bench-{n:05d}") for n in range(KEYS)]
    request = {"module": module, "label": BENCH_TOKEN, "pin": pin, "keys": wanted}
    start = time.perf_counter()
    made = subprocess.run(
        [sys.executable, "-c", _POPULATE],
        input=json.dumps(request),  # the PIN on stdin
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    kcvs = dict(line.split() for line in made.stdout.splitlines())
    assert len(kcvs) == KEYS
    _bench(
        {
            "op": f"populate token with {KEYS} AES-128 keys",
            "s": round(time.perf_counter() - start, 1),
        }
    )

    p = paths.under(tmp_path / "home").ensure()
    config.write(
        p.config_file,
        config.TokenConfig(module=module, label=BENCH_TOKEN, softhsm2_conf=str(conf)),
    )
    _registry(p, serial, [(key_id, label, kcvs[key_id]) for key_id, label in wanted])

    listing = [sys.executable, "-m", "kmtui", "--home", str(p.home), "keys", "list", "--json"]
    # The PIN on argv is acceptable ONLY here: a throwaway token made for this benchmark, deleted
    # with its temp dir. kmtui itself never takes a PIN on the command line.
    scan = [tool or "pkcs11-tool", "--module", module, "--token-label", BENCH_TOKEN]
    scan += ["--login", "--pin", pin, "--list-objects"]

    raw = [sys.executable, "-c", _RAW_LIST, str(p.database), BENCH_TOKEN]
    runs: dict[str, Callable[[], float]] = {}

    def kmtui_run() -> float:
        elapsed, out = _wall(listing, env)
        keys = json.loads(out)
        assert len(keys) == KEYS
        assert {k["id"]: k["kcv"] for k in keys} == kcvs
        return elapsed

    runs["kmtui"] = kmtui_run
    same = json.loads(_wall(listing, env)[1])  # untimed: page cache and byte-code cache warmed

    def raw_run(check: str) -> Callable[[], float]:
        def run() -> float:
            elapsed, out = _wall([*raw, check], env)
            assert json.loads(out) == same  # the same query: the same JSON, key for key
            return elapsed

        return run

    runs["sqlite3"] = raw_run("check")
    runs["sqlite3_without_integrity_check"] = raw_run("no-check")

    def tool_run() -> float:
        elapsed, out = _wall(scan, env)
        listed = [line for line in out.splitlines() if line.startswith("Secret Key Object")]
        assert len(listed) == KEYS
        return elapsed

    if tool:
        runs["pkcs11_tool"] = tool_run
    for run in runs.values():
        run()  # untimed, for each alike
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(RUNS):  # round-robin, so drift hits every command alike
        for name, run in runs.items():
            times[name].append(run())
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    for name, seconds in times.items():
        _bench(
            {
                "op": f"{name} ({KEYS} keys)",
                "median_s": round(median[name], 3),
                "runs_s": [round(x, 3) for x in seconds],
            }
        )
    k = median["kmtui"]
    rows = [
        {
            "op": "keys list --json vs the same query on raw sqlite3 (like with like)",
            "kmtui_s": round(k, 3),
            "sqlite3_s": round(median["sqlite3"], 3),
            "sqlite3_without_integrity_check_s": round(
                median["sqlite3_without_integrity_check"], 3
            ),
            "ratio": round(k / median["sqlite3"], 3),
            "bound": SQLITE_BOUND,
        }
    ]
    if tool:
        t = median["pkcs11_tool"]
        rows.append(
            {
                "op": "keys list --json (registry read) vs pkcs11-tool --list-objects (token scan)",
                "kmtui_s": round(k, 3),
                "pkcs11_tool_s": round(t, 3),
                "ratio": round(k / t, 3),
                "bound": TOKEN_SCAN_BOUND,
            }
        )
    for row in rows:
        row["within"] = row["ratio"] <= row["bound"]
        _bench(row)
    over = [f"{r['op']}: {r['ratio']}x > {r['bound']}x" for r in rows if not r["within"]]
    assert not over, "; ".join(over)
