"""A real sshd on a localhost port: an operation the policy keeps to the console is refused over
SSH even with the SSH variables removed (`env -u SSH_CONNECTION -u SSH_TTY -u SSH_CLIENT`),
before anyone is asked for a PIN or a code, and the trail records via=ssh with its signals.

The sshd is this test's own: its config, host key and authorised key live in a temp dir, it
listens on 127.0.0.1 only, and it lets in the current user with the generated key alone (as root
in CI: `PermitRootLogin prohibit-password`, for this sshd only). `make test` installs
openssh-server when it is missing.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, base_of, kmtui, make_demo

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
WAIT = 60


@dataclass(frozen=True)
class Login:
    """How to run a command over the test's sshd, as the current user, on a pty."""

    port: int
    key: Path
    user: str

    def run(self, command: str, typed: str = "") -> subprocess.CompletedProcess[str]:
        """`typed` goes to the far side's terminal, as if someone typed it there. A command
        still waiting for input after a minute is killed, and its output kept."""
        args = [
            "ssh",
            "-tt",  # a pty on the far side: kmtui would prompt for codes there
            "-F",
            "/dev/null",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@127.0.0.1",
            command,
        ]
        with subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                out, err = proc.communicate(typed, timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                err += f"\n[still waiting for input after {WAIT} s: killed]"
        return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def ssh_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Login]:
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.skip(
            "openssh-server (sshd) or the ssh client is not installed; `make test` installs "
            "openssh-server as root on Debian/Ubuntu"
        )
    here = tmp_path_factory.mktemp("sshd")
    _keygen(here / "host_key")
    _keygen(here / "client_key")
    shutil.copy(here / "client_key.pub", here / "authorized_keys")
    user, port = getpass.getuser(), _free_port()
    config = here / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {here}/host_key
PidFile {here}/sshd.pid
AuthorizedKeysFile {here}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PrintMotd no
"""
    )
    if os.geteuid() == 0:  # sshd's privilege separation directory (its service would make it)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    checked = subprocess.run(
        [SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        pytest.skip(f"sshd refuses the test's configuration: {checked.stderr.strip()}")
    log = (here / "sshd.log").open("w")
    server = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if server.poll() is not None:
                pytest.skip(f"sshd could not start: {(here / 'sshd.log').read_text().strip()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("sshd did not start listening within 15 seconds")
                time.sleep(0.1)
        yield Login(port, here / "client_key", user)
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def test_the_test_login_is_a_real_ssh_session_on_a_pty(ssh_login: Login) -> None:
    """What the next test removes is there to remove, and kmtui would be asked on a terminal."""
    proc = ssh_login.run("printenv SSH_CONNECTION; test -t 0 && echo on-a-tty")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "127.0.0.1"
    assert "on-a-tty" in proc.stdout


def test_a_console_only_change_over_ssh_without_its_variables_is_refused_before_any_code(
    ssh_login: Login, tmp_path_factory: pytest.TempPathFactory
) -> None:
    demo = make_demo(tmp_path_factory.mktemp("kmtui-ssh-home"))
    home = base_of(demo)
    rules = demo / "rules.json"
    rules.write_text(json.dumps({"rotation_days": 90}))
    before = json.loads(kmtui(home, "--demo", "policies", "show", "default", "--json").stdout)
    command = " ".join(
        [
            "cd",
            shlex.quote(str(REPO)),
            "&&",
            "exec env -u SSH_CONNECTION -u SSH_TTY -u SSH_CLIENT",
            f"PYTHONPATH={shlex.quote(str(REPO))}",
            shlex.quote(sys.executable),
            "-m kmtui --home",
            shlex.quote(str(home)),
            "--demo policies change default --rules-file",
            shlex.quote(str(rules)),
        ]
    )
    # Answers for prompts that must never come: were kmtui to ask, they would show in the output.
    proc = ssh_login.run(command, typed="alice\n123456\nbob\n654321\n")
    shown = proc.stdout + proc.stderr  # one pty: both streams arrive on stdout
    assert proc.returncode == 1, shown
    assert "policy.change is allowed only at the workstation console, not over SSH" in shown
    for asked in ("Operation :", "Approver", "PIN", "code"):
        assert asked not in shown, shown
    after = json.loads(kmtui(home, "--demo", "policies", "show", "default", "--json").stdout)
    assert after == before
    trail = kmtui(home, "--demo", "audit", "export", "--format", "jsonl")
    last = json.loads(trail.stdout.splitlines()[-1])
    assert (last["action"], last["outcome"], last["actor"]) == ("policy.change", "refused", "cli")
    params = last["params"]
    assert params["via"] == "ssh"
    assert params["signals"].startswith("ancestry=remote(sshd ")
    assert "env=none" in params["signals"]
