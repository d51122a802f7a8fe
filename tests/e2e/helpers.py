"""What the end-to-end tests share: real `python -m kmtui` processes and the demo's operators.

`Approvers` stands in for the demo operators' phones. kmtui accepts a code only if its 30-second
TOTP step is later than the last step it accepted from that operator, and only within one step of
the present, so each operator has at most three usable steps at any moment (previous, current,
next). `Approvers` hands each operator's steps out strictly in order and waits for the next step
when an operator has none left. The current step's code is taken from `kmtui demo codes --json`,
the others are computed from the seeds the demo keeps in its home (demo only).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pyotp

from kmtui.core.control.pin import PinHalves, parse_lines
from kmtui.demo import HALVES_FILE

STEP = 30
MARGIN = 8.0  # a previous-step code is handed out only while it stays valid this much longer
# Commands that need the local console (policy change, enrolment...) must not see an SSH session:
# they run at the stand-in console of tests/origin_tree.py (at_console.py), with no SSH variables.
AT_CONSOLE: dict[str, str | None] = {"SSH_CONNECTION": None, "SSH_TTY": None, "SSH_CLIENT": None}
AT_CONSOLE_MAIN = Path(__file__).with_name("at_console.py")
REPO = Path(__file__).resolve().parents[2]


def kmtui(
    home: Path,
    *args: str,
    stdin: str | None = None,
    env: Mapping[str, str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m kmtui --home HOME ARGS...`; `env` adds variables (None removes one). An `env`
    that removes SSH_CONNECTION (AT_CONSOLE) runs kmtui at the stand-in console."""
    environ = {k: v for k, v in os.environ.items() if k not in ("KMTUI_HOME", "SOFTHSM2_CONF")}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    console = env is not None and "SSH_CONNECTION" in env and env["SSH_CONNECTION"] is None
    program = [str(AT_CONSOLE_MAIN)] if console else ["-m", "kmtui"]
    return subprocess.run(
        [sys.executable, *program, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=environ,
        input=stdin,
        timeout=120,
        check=False,
    )


def make_demo(base: Path) -> Path:
    """A demo workstation made by the same code `kmtui demo` runs, in a separate process (at the
    stand-in console: the demo's set-up enrols its operators)."""
    code = f"""
import os, sys, tempfile
sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from kmtui import demo, paths
from kmtui.core.control import origin
from tests.origin_tree import console
with tempfile.TemporaryDirectory() as tmp:
    origin.ROOTS = console(Path(tmp), os.getpid())
    print(demo.ensure(paths.resolve()).home)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"},
            "KMTUI_HOME": str(base),
        },
    )
    return Path(out.stdout.strip())


def demo_pairs(demo_home: Path) -> list[tuple[str, str]]:
    """(holder, half) of the demo token's user PIN, from the demo's own file (demo only)."""
    return parse_lines((demo_home / "data" / HALVES_FILE).read_text(encoding="utf-8"))


def demo_pin(demo_home: Path) -> str:
    """The demo token's whole user PIN, for test processes that drive the token directly."""
    return PinHalves.of(demo_pairs(demo_home)).pin()


def base_of(demo_home: Path) -> Path:
    """The --home that `kmtui --demo ...` needs: the demo lives in <base>/data/demo."""
    return demo_home.parent.parent


def demo_seeds(demo_home: Path) -> dict[str, str]:
    """name -> base32 seed, from the demo's stand-in for the operators' phones."""
    data = json.loads((demo_home / "data" / "demo-operators.json").read_text(encoding="utf-8"))
    return {name: entry["seed"] for name, entry in data.items()}


def code_at(seed: str, step: int) -> str:
    """What an authenticator app shows during TOTP step `step` (SHA-1, 6 digits, 30 s)."""
    return pyotp.TOTP(seed).generate_otp(step)


def stale_code(seed: str) -> str:
    """A well-formed code from three steps ago: outside the window, so it can never count."""
    return code_at(seed, int(time.time() // STEP) - 3)


class Approvers:
    """The demo operators' authenticators, each operator's steps handed out strictly in order."""

    def __init__(self, demo_home: Path) -> None:
        self.demo_home = demo_home
        self.seeds = demo_seeds(demo_home)
        self.last: dict[str, int] = {}  # the demo's own set-up used steps from an hour ago
        self.waited = 0.0

    def add(self, name: str, seed: str) -> None:
        self.seeds[name] = seed

    def _pick(self, names: tuple[str, ...]) -> tuple[int, dict[str, int]]:
        while True:
            now = time.time()
            step = int(now // STEP)
            lowest = step - 1 if STEP - now % STEP > MARGIN else step
            picks = {n: max(self.last.get(n, 0) + 1, lowest) for n in names}
            if all(p <= step + 1 for p in picks.values()):
                return step, picks
            pause = STEP - now % STEP + 0.3
            self.waited += pause
            time.sleep(pause)

    def codes(self, *names: str) -> dict[str, str]:
        """One fresh code per named operator (each step is used once, then never again)."""
        assert len(set(names)) == len(names)
        step, picks = self._pick(names)
        codes = {n: code_at(self.seeds[n], p) for n, p in picks.items()}
        current = [n for n, p in picks.items() if p == step and n in demo_seeds(self.demo_home)]
        if current:
            shown = kmtui(base_of(self.demo_home), "--demo", "demo", "codes", "--json")
            assert shown.returncode == 0, shown.stderr
            if int(time.time() // STEP) == step:  # no step boundary passed: they must agree
                listed = {e["operator"]: e["code"] for e in json.loads(shown.stdout)}
                for name in current:
                    assert listed[name] == codes[name], f"demo codes disagrees for {name}"
        self.last.update(picks)
        return codes

    def lines(self, *names: str) -> str:
        """`OPERATOR CODE` lines for --approvals-from."""
        return "".join(f"{n} {c}\n" for n, c in self.codes(*names).items())

    def file(self, directory: Path, *names: str) -> str:
        """A fresh approvals file from the named operators; its path, for --approvals-from."""
        path = directory / f"approvals-{'-'.join(names)}-{time.monotonic_ns()}.txt"
        path.write_text(self.lines(*names), encoding="utf-8")
        return str(path)

    def stale(self, name: str) -> str:
        return stale_code(self.seeds[name])


_PROBE = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass

req = json.loads(sys.stdin.read())
token = pkcs11.lib(req["module"]).get_token(token_label=req["label"])
out = {}
with token.open(user_pin=req["pin"]) as session:
    for cka_id in req["ids"]:
        found = []
        for obj in list(session.get_objects({Attribute.ID: bytes.fromhex(cka_id)})):
            cls = obj[Attribute.CLASS]
            entry = {"class": cls.name}
            if cls == ObjectClass.SECRET_KEY:
                entry["sensitive"] = bool(obj[Attribute.SENSITIVE])
                entry["extractable"] = bool(obj[Attribute.EXTRACTABLE])
                entry["check_value"] = bytes(obj[Attribute.CHECK_VALUE] or b"")[:3].hex().upper()
                if obj[Attribute.ENCRYPT]:
                    block = obj.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)
                    entry["ecb_kcv"] = bytes(block[:3]).hex().upper()
            found.append(entry)
        out[cka_id] = found
print(json.dumps(out))
"""


def _token_child(demo_home: Path, script: str, request: dict[str, object]) -> str:
    """Run `script` against the demo token in a child process (SoftHSM reads its conf there)."""
    import tomllib

    config = (demo_home / "config" / "config.toml").read_text(encoding="utf-8")
    token = tomllib.loads(config)["token"]
    request = {
        "module": token["module"],
        "label": token["label"],
        "pin": demo_pin(demo_home),
        **request,
    }
    env = {**os.environ, "SOFTHSM2_CONF": token["softhsm2_conf"]}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(request),  # the PIN on stdin, never argv
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def token_objects(demo_home: Path, cka_ids: list[bytes]) -> dict[bytes, list[dict[str, object]]]:
    """Read the demo token directly with python-pkcs11, in a child process (not through kmtui).

    For each CKA_ID: its objects' class and, for secret keys, SENSITIVE, EXTRACTABLE, the token's
    CKA_CHECK_VALUE and the AES KCV computed here (first 3 bytes of AES-ECB of a zero block).
    """
    out = _token_child(demo_home, _PROBE, {"ids": [i.hex() for i in cka_ids]})
    return {bytes.fromhex(k): v for k, v in json.loads(out).items()}


_PLANT = r"""
import json, sys
import pkcs11
from pkcs11 import Attribute, ObjectClass

req = json.loads(sys.stdin.read())
token = pkcs11.lib(req["module"]).get_token(token_label=req["label"])
with token.open(rw=True, user_pin=req["pin"]) as session:
    for label in req["labels"]:
        session.create_object({
            Attribute.CLASS: ObjectClass.DATA,
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.LABEL: label,
            Attribute.VALUE: b"planted by a test",
        })
"""


def plant_data_objects(demo_home: Path, labels: list[str]) -> None:
    """Put foreign DATA objects (no CKA_ID: SoftHSM refuses one on data objects) on the token."""
    _token_child(demo_home, _PLANT, {"labels": labels})


def cka_id_of(key_id: str, version: int) -> bytes:
    """kmtui's CKA_ID scheme (README: `kmtui:<key id>:<version>`), spelled out independently."""
    return f"kmtui:{key_id}:{version}".encode("ascii")


class Terminal:
    """A command on a real terminal (a tmux pane): wait for its prompts, type at them."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        self.session = f"kmtui-{name}-{os.getpid()}-{time.monotonic_ns()}"
        line = " ".join(shlex.quote(word) for word in command)
        size = ("-x", "160", "-y", "50")
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.session,
                *size,
                f"{line}; echo EXIT=$?; sleep 60",
            ],
            check=True,
            env=dict(env),
        )

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", *args], capture_output=True, text=True, check=False)
        return done.stdout

    def screen(self) -> str:
        """Everything the terminal showed, scrollback included."""
        return self._tmux("capture-pane", "-p", "-J", "-t", self.session, "-S", "-")

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in (shown := self.screen()):
            assert time.monotonic() < deadline, f"waited for {text!r}; the screen:\n{shown}"
            time.sleep(0.1)
        return shown

    def type(self, text: str) -> None:
        """Type `text` and Enter, as a person at the keyboard would."""
        self._tmux("send-keys", "-t", self.session, "-l", text)
        self._tmux("send-keys", "-t", self.session, "Enter")

    def interrupt(self) -> None:
        self._tmux("send-keys", "-t", self.session, "C-c")

    def exit_code(self, timeout: float = 60) -> int:
        shown = self.wait_for("EXIT=", timeout)
        return int(shown.split("EXIT=")[-1].split()[0])

    def close(self) -> None:
        self._tmux("kill-session", "-t", self.session)


def terminal_env() -> dict[str, str]:
    """The environment of a kmtui started at the console: no SSH, no inherited home or token."""
    drop = ("KMTUI_HOME", "SOFTHSM2_CONF", "SSH_CONNECTION", "SSH_TTY", "SSH_CLIENT")
    return {k: v for k, v in os.environ.items() if k not in drop}
