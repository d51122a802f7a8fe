"""Keys that travel, through real `python -m kmtui` processes on a demo workstation.

Export and import under a trusted AES KEK, a key as XOR components (created, then entered again
from the custodians' forms), and a recipient's RSA public key: imported as trusted by the security
officer (the demo keeps both SO PIN halves in its home, so no --so-pin-halves-from), then an
exportable key wrapped to it with RSA-OAEP and opened here with the recipient's private key.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kmtui.core.keys.components import kcv_of
from tests.e2e.helpers import AT_CONSOLE, Approvers, cka_id_of, kmtui, make_demo, token_objects

pytestmark = pytest.mark.slow


def run(
    home: Path, *args: str, code: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """One command at the console; its exit code, and never a traceback or an internal error."""
    proc = kmtui(home, *args, stdin=stdin, env=AT_CONSOLE)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}"
    return proc


@dataclass
class Site:
    """One demo workstation and its operators' authenticators."""

    home: Path
    approvers: Approvers
    work: Path

    def approved(self, names: tuple[str, str], *args: str) -> dict[str, Any]:
        approvals = self.approvers.file(self.work, *names)
        proc = run(self.home, *args, "--json", "--approvals-from", approvals)
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


def site(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    crew = Approvers(home)
    yield Site(home, crew, tmp_path_factory.mktemp("distribution"))
    print(f"\nwaited {crew.waited:.1f} s for new TOTP steps")  # shown with -s


# Each demo operator has at most three usable TOTP steps at a time (tests/e2e/helpers.py): three
# workstations of their own keep these nine dual-controlled commands from waiting for new steps.
@pytest.fixture(scope="module")
def kek_site(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from site(demo_home, tmp_path_factory)


@pytest.fixture(scope="module")
def components_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from site(make_demo(tmp_path_factory.mktemp("kmtui-home")), tmp_path_factory)


@pytest.fixture(scope="module")
def recipient_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from site(make_demo(tmp_path_factory.mktemp("kmtui-home")), tmp_path_factory)


def exportable_dek(at: Site, label: str) -> dict[str, Any]:
    return at.approved(
        ("bob", "carol"),
        *("keys", "create", "--label", label, "--algorithm", "AES-256", "--purpose", "encrypt"),
        *("--policy", "exportable-dek", "--exportable"),
    )


def test_export_and_import_under_a_trusted_kek(kek_site: Site) -> None:
    at, work = kek_site, kek_site.work
    # A trusted AES KEK, made by the security officer's child process (SO PIN from the demo).
    kek = at.approved(
        ("alice", "bob"),
        *("keys", "create", "--label", "e2e-transport-kek", "--algorithm", "AES-256"),
        *("--purpose", "wrap", "--trusted"),
    )
    dek = exportable_dek(at, "e2e-export-dek")
    out = work / "dek-kek.json"
    exported = at.approved(
        ("alice", "carol"),
        *("keys", "export", dek["id"], "--wrap-with", kek["label"], "--out", str(out)),
    )
    manifest = json.loads(out.read_text())["manifest"]
    assert manifest["mechanism"] == "aes-key-wrap-pad" and manifest["kcv"] == dek["kcv"]
    assert manifest["wrapping_key_kcv"] == kek["kcv"] == exported["manifest"]["wrapping_key_kcv"]
    assert out.stat().st_mode & 0o777 == 0o600
    # A non-exportable key is refused before anyone approves anything.
    refused = run(at.home, "keys", "export", "payments-db-dek", "--wrap-with", kek["id"],
                  "--out", str(work / "no.json"), code=1)  # fmt: skip
    assert "not exportable" in refused.stderr and not (work / "no.json").exists()
    # The custodian types the KCV from the paper form too; the token recomputes it.
    imported = at.approved(
        ("alice", "bob"),
        *("keys", "import", str(out), "--unwrap-with", kek["id"], "--label", "e2e-dek-copy"),
        *("--kcv", dek["kcv"]),
    )
    assert imported["kcv"] == dek["kcv"] and imported["label"] == "e2e-dek-copy"
    cka_id = cka_id_of(imported["id"], 1)
    [obj] = token_objects(at.home, [cka_id])[cka_id]
    assert obj["ecb_kcv"] == dek["kcv"] and (obj["sensitive"], obj["extractable"]) == (True, False)


def test_components_created_then_entered_again_give_the_same_key(components_site: Site) -> None:
    at = components_site
    forms = at.work / "forms"
    created = at.approved(
        ("bob", "carol"),
        *("keys", "components-create", "--label", "e2e-zmk", "--algorithm", "AES-256"),
        *("--custodians", "alice,bob,carol", "--components-dir", str(forms)),
    )
    assert sorted(p.name for p in forms.iterdir()) == ["alice.txt", "bob.txt", "carol.txt"]
    values = []
    for name in ("alice", "bob", "carol"):
        form = forms / f"{name}.txt"
        lines = dict(line.split(" ", 1) for line in form.read_text().splitlines())
        value = bytes.fromhex(lines["component"].replace(" ", ""))
        assert lines["kcv"] == kcv_of(value) and form.stat().st_mode & 0o077 == 0
        values.append(value)
    whole = bytes(a ^ b ^ c for a, b, c in zip(*values, strict=True))
    assert created["kcv"] == kcv_of(whole)
    entered = at.approved(
        ("alice", "carol"),
        *("keys", "components-import", "--label", "e2e-zmk-entered", "--algorithm", "AES-256"),
        *("--custodians", "alice,bob,carol", "--components-dir", str(forms)),
        *("--kcv", created["kcv"]),
    )
    assert entered["kcv"] == created["kcv"] and entered["id"] != created["id"]
    trail = run(at.home, "audit", "export").stdout.lower()
    assert not [v for v in [*values, whole] if v.hex() in trail]


def test_a_trusted_recipient_receives_a_key_wrapped_with_rsa_oaep(recipient_site: Site) -> None:
    at, work = recipient_site, recipient_site.work
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = work / "partner.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    short = work / "short.pem"
    short.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    refused = run(at.home, "keys", "import-public", "--pem", str(short), "--label", "weak",
                  code=2)  # fmt: skip
    assert "too short" in refused.stderr and "RSA-1024" in refused.stderr
    recipient = at.approved(
        ("alice", "bob"),
        *("keys", "import-public", "--pem", str(pem), "--label", "e2e-partner", "--trusted"),
    )
    assert recipient["algorithm"] == "RSA-2048" and recipient["purpose"] == "wrap"
    fingerprint = recipient["versions"][0]["fingerprint"]
    assert fingerprint == recipient["fingerprint"] and fingerprint.startswith("SHA256:")
    dek = exportable_dek(at, "e2e-partner-dek")
    out = work / "dek-partner.json"
    at.approved(
        ("alice", "carol"),
        *("keys", "export", dek["id"], "--wrap-with", "e2e-partner", "--out", str(out)),
    )
    document = json.loads(out.read_text())
    manifest = document["manifest"]
    assert manifest["mechanism"] == "rsa-oaep-sha1"
    assert manifest["wrapping_key_fingerprint"] == fingerprint and manifest["kcv"] == dek["kcv"]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    value = private.decrypt(base64.b64decode(document["wrapped"]), oaep)
    assert kcv_of(value) == dek["kcv"]
    # That file is for the recipient's HSM: this workstation says so and imports nothing.
    refused = run(at.home, "keys", "import", str(out), "--unwrap-with", "backup-kek-2026",
                  "--label", "nope", code=2)  # fmt: skip
    assert "meant for that recipient's private key" in refused.stderr
    report = kmtui(at.home, "reconcile", "--json", env=AT_CONSOLE)
    assert json.loads(report.stdout)["clean"], report.stdout
