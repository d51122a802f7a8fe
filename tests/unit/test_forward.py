"""Forwarding to a real syslog collector on 127.0.0.1: framing, at-least-once, TLS, the cursor.

The collector here is a small threaded TCP server that parses RFC 6587 octet-counted frames and
records the seq from each message's structured data. It reads exactly one frame at a time, so
when it is told to die after K messages it leaves the rest unread, as a crashed collector would.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import re
import socket
import sqlite3
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kmtui.core import errors
from kmtui.core.audit import export
from kmtui.core.audit.forward import Forwarder, cursor_key, tls_context
from kmtui.core.audit.log import AuditLog, canonical_json
from kmtui.core.errors import ForwardCursorAhead, ForwardError
from kmtui.core.registry.db import Store

LOOPBACK = "127.0.0.1"
EVENTS = 300
SD_SEQ = re.compile(rb'^<\d{1,3}>1 \S+ \S+ kmtui - \S+ \[kmtui@32473 seq="(\d+)" ')
WAIT = 10.0  # upper bound on every wait in this module


# -- the collector ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    seq: int
    payload: bytes
    connection: int


class Collector:
    """A syslog collector over TCP (or TLS) on 127.0.0.1, recording every message it parsed.

    mode: "normal" reads until EOF then closes; "hangup" closes each connection unread;
    "mute" closes its sending side at once and reads nothing; "hold" reads everything but never
    closes. `die_after` kills the whole collector (listener
    and connections) right after the K-th message, leaving the rest unread.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        tls_close_notify: bool = False,
        die_after: int | None = None,
        mode: str = "normal",
    ) -> None:
        self.listener = socket.create_server((LOOPBACK, port))  # SO_REUSEADDR: same port again
        self.port = int(self.listener.getsockname()[1])
        self.tls, self.tls_close_notify = tls, tls_close_notify
        self.die_after, self.mode = die_after, mode
        self.messages: list[Message] = []
        self.problems: list[str] = []
        self.connections = 0
        self.dead = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        if mode == "mute":  # a small window, so unread bytes stay unacknowledged
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        self.listener.settimeout(0.05)
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.dead.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self._lock:
                self.connections += 1
                number = self.connections
                self._open.append(conn)
            self._spawn(self._serve, conn, number)

    def _serve(self, conn: socket.socket, number: int) -> None:
        try:
            conn.settimeout(WAIT)
            if self.mode == "hangup":
                return
            if self.mode == "mute":
                conn.shutdown(socket.SHUT_WR)
                self.dead.wait(WAIT)
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
                with self._lock:
                    self._open.append(conn)
            while (payload := _read_frame(conn)) is not None:
                match = SD_SEQ.match(payload)
                if match is None:
                    self.problems.append(f"no seq in structured data: {payload[:80]!r}")
                    continue
                with self._lock:
                    self.messages.append(Message(int(match.group(1)), payload, number))
                    dying = self.die_after is not None and len(self.messages) >= self.die_after
                if dying:
                    self.kill(conn)
                    return
            if self.mode == "hold":
                self.dead.wait(WAIT)
                return
            if isinstance(conn, ssl.SSLSocket) and self.tls_close_notify:
                conn.unwrap()
        except (OSError, ValueError) as exc:
            if not self.dead.is_set():
                self.problems.append(repr(exc))
        finally:
            conn.close()

    def kill(self, current: socket.socket | None = None) -> None:
        """Die at once: no more connections, every open one closed with whatever is unread.

        A socket another thread is blocked on stays open until that call returns, so those are
        shut down first; the calling handler's own connection is simply closed, as at exit.
        """
        self.dead.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # stops listening now, wakes accept()
        self.listener.close()
        with self._lock:
            connections, self._open = self._open, []
        for conn in connections:
            if conn is not current:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def stop(self) -> None:
        self.kill()
        for thread in self._threads:
            thread.join(WAIT)

    def seqs(self) -> list[int]:
        with self._lock:
            return [m.seq for m in self.messages]


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError(f"connection closed inside a frame ({len(data)} of {size} bytes)")
        data += chunk
    return data


def _read_frame(conn: socket.socket) -> bytes | None:
    """One RFC 6587 octet-counted frame (MSG-LEN SP MSG), None at EOF between frames."""
    digits = b""
    while True:
        byte = conn.recv(1)
        if not byte:
            if digits:
                raise ValueError("connection closed inside a frame length")
            return None
        if byte == b" ":
            break
        if not byte.isdigit() or len(digits) > 6 or (not digits and byte == b"0"):
            raise ValueError(f"bad frame length {digits + byte!r}")
        digits += byte
    return _read_exactly(conn, int(digits))


@pytest.fixture
def collectors() -> Iterator[list[Collector]]:
    """Collectors a test starts; all stopped at the end, whatever happened."""
    started: list[Collector] = []
    yield started
    for collector in started:
        collector.stop()


def start(collectors: list[Collector], port: int = 0, **options: object) -> Collector:
    collector = Collector(port, **options)  # type: ignore[arg-type]
    collectors.append(collector)
    return collector


# -- the trail ----------------------------------------------------------------------------------


def append_events(store: Store, count: int) -> None:
    log = AuditLog(store)
    for n in range(count):
        log.append(
            ("key.create", "key.rotate", "token.login")[n % 3],
            actor=("alice", "bob", "Zoë")[n % 3],
            outcome=("intent", "success", "failure")[n % 3],
            key_id=f"k{n % 7:012d}",
            params={"n": n, "label": f'läbel "{n}" ] \\ ✓\nline two', "list": [n, None]},
        )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EVENTS appended once (each append is a durable commit); every test gets a copy."""
    path = tmp_path_factory.mktemp("pristine") / "kmtui.db"
    store = Store.open(path)
    append_events(store, EVENTS)
    store.close()
    return path


@pytest.fixture
def trail(pristine: Path, tmp_path: Path) -> Iterator[Store]:
    source, target = sqlite3.connect(pristine), sqlite3.connect(tmp_path / "kmtui.db")
    source.backup(target)
    source.close()
    target.close()
    store = Store.open(tmp_path / "kmtui.db")
    assert stored_cursor(store, 1) is None and len(expected_messages(store)) == EVENTS
    yield store
    store.close()


def expected_messages(store: Store, fmt: str = "syslog") -> dict[int, bytes]:
    """seq -> the exact RFC 5424 message kmtui's own formatter makes for it."""
    out: dict[int, bytes] = {}
    for event in export.events_since(store, 0):
        line = export.to_syslog(event)
        if fmt != "syslog":
            body = export.FORMATTERS[fmt](event)
            assert line.endswith(" " + canonical_json(event["params"]))
            line = line[: -len(canonical_json(event["params"]))] + body
        out[int(event["seq"])] = line.encode("utf-8")
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def stored_cursor(store: Store, port: int) -> int | None:
    rows = store.rows("SELECT value FROM meta WHERE key = ?", (cursor_key(LOOPBACK, port),))
    return int(rows[0]["value"]) if rows else None


# -- delivery -----------------------------------------------------------------------------------


def test_every_event_arrives_once_as_an_octet_counted_rfc5424_message_with_its_seq(
    trail: Store, collectors: list[Collector]
) -> None:
    collector = start(collectors)
    forwarder = Forwarder(trail, LOOPBACK, collector.port, batch=120)
    assert forwarder.send_pending() == EVENTS
    assert collector.seqs() == list(range(1, EVENTS + 1)) and not collector.problems
    assert collector.connections == 3  # batches of 120, 120, 60, one connection each
    expected = expected_messages(trail)
    assert {m.seq: m.payload for m in collector.messages} == expected
    assert forwarder.cursor() == stored_cursor(trail, collector.port) == EVENTS
    assert forwarder.send_pending() == 0 and collector.connections == 3  # nothing new: no call


@pytest.mark.parametrize("fmt", ["cef", "jsonl"])
def test_cef_and_jsonl_bodies_travel_in_rfc5424_messages_that_keep_the_seq(
    trail: Store, collectors: list[Collector], fmt: str
) -> None:
    collector = start(collectors)
    assert Forwarder(trail, LOOPBACK, collector.port, fmt=fmt).send_pending() == EVENTS
    assert {m.seq: m.payload for m in collector.messages} == expected_messages(trail, fmt)
    marker = b"CEF:0|kmtui|" if fmt == "cef" else b'{"action":'
    assert all(marker in m.payload for m in collector.messages)


def test_collector_killed_mid_stream_then_restarted_gets_every_seq_with_identical_duplicates(
    trail: Store, collectors: list[Collector]
) -> None:
    batch, die_after = 50, 120  # batches 1-50 and 51-100 confirmed; killed inside 101-150
    first = start(collectors, die_after=die_after)
    port = first.port
    forwarder = Forwarder(trail, LOOPBACK, port, batch=batch, timeout=5)
    with pytest.raises(ForwardError) as raised:
        forwarder.send_pending()
    assert raised.value.forwarded == 100
    assert f"{LOOPBACK}:{port}" in raised.value.message
    assert "after event 100" in raised.value.hint and "resends" in raised.value.hint
    assert first.seqs() == list(range(1, die_after + 1))  # it read exactly K, no more
    assert forwarder.cursor() == stored_cursor(trail, port) == 100  # not past the confirmed
    with pytest.raises(ForwardError, match="unreachable"):  # still down: nothing moves
        forwarder.send_pending()
    assert forwarder.cursor() == 100

    second = start(collectors, port)
    assert second.port == port
    assert forwarder.send_pending() == EVENTS - 100
    assert forwarder.cursor() == EVENTS
    assert second.seqs() == list(range(101, EVENTS + 1))
    assert not first.problems and not second.problems

    arrived = first.messages + second.messages
    assert {m.seq for m in arrived} == set(range(1, EVENTS + 1))
    counts = Counter(m.seq for m in arrived)
    duplicated = sorted(seq for seq, n in counts.items() if n > 1)
    assert duplicated == list(range(101, die_after + 1))  # resent: the unconfirmed batch's part
    payloads: dict[int, set[bytes]] = {}
    for m in arrived:
        payloads.setdefault(m.seq, set()).add(m.payload)
    assert all(len(p) == 1 for p in payloads.values())  # same seq, same bytes
    assert {s: p.pop() for s, p in payloads.items()} == expected_messages(trail)


def test_a_collector_that_hangs_up_without_reading_never_counts_as_a_confirmation(
    trail: Store, collectors: list[Collector]
) -> None:
    # It closes each connection at once, before or after the bytes arrive: both must fail.
    collector = start(collectors, mode="hangup")
    forwarder = Forwarder(trail, LOOPBACK, collector.port, batch=10, timeout=2)
    for _ in range(20):
        with pytest.raises(ForwardError, match="dropped the connection") as raised:
            forwarder.send_pending()
        assert raised.value.forwarded == 0
    assert collector.connections == 20
    assert forwarder.cursor() == 0 and stored_cursor(trail, collector.port) is None


def test_a_collector_that_closed_its_side_before_taking_the_batch_is_not_a_confirmation(
    trail: Store, collectors: list[Collector]
) -> None:
    # It half-closes at once and reads nothing: our half-close then meets a clean EOF, and only
    # the bytes its TCP stack never acknowledged show that the batch did not get through.
    collector = start(collectors, mode="mute")
    forwarder = Forwarder(trail, LOOPBACK, collector.port, batch=40, timeout=0.5)
    with pytest.raises(ForwardError, match=r"before confirming \(timed out\)"):
        forwarder.send_pending()
    assert forwarder.cursor() == 0 and collector.messages == []


def test_a_collector_that_never_closes_times_out_without_moving_the_cursor(
    trail: Store, collectors: list[Collector]
) -> None:
    collector = start(collectors, mode="hold")
    forwarder = Forwarder(trail, LOOPBACK, collector.port, batch=40, timeout=0.5)
    began = time.monotonic()
    with pytest.raises(ForwardError, match=r"before confirming \(timed out\)"):
        forwarder.send_pending()
    assert 0.4 < time.monotonic() - began < WAIT
    assert collector.seqs() == list(range(1, 41))  # received, but never confirmed
    assert forwarder.cursor() == 0


def test_an_unreachable_collector_is_an_error_naming_it_and_the_cursor_stays(
    trail: Store,
) -> None:
    port = free_port()
    forwarder = Forwarder(trail, LOOPBACK, port, timeout=2)
    with pytest.raises(ForwardError) as raised:
        forwarder.send_pending()
    text = str(raised.value)
    assert f"The collector at {LOOPBACK}:{port} is unreachable (Connection refused)" in text
    assert "Nothing after event 0 was marked as forwarded" in text
    assert isinstance(raised.value, errors.KmtuiError) and raised.value.exit_code == 1
    assert stored_cursor(trail, port) is None


# -- the cursor ---------------------------------------------------------------------------------


def test_the_cursor_survives_a_store_reopen_and_only_new_events_are_sent(
    tmp_path: Path, collectors: list[Collector]
) -> None:
    path = tmp_path / "kmtui.db"
    store = Store.open(path)
    append_events(store, 30)
    collector = start(collectors)
    assert Forwarder(store, LOOPBACK, collector.port).send_pending() == 30
    store.close()

    reopened = Store.open(path)
    try:
        forwarder = Forwarder(reopened, LOOPBACK, collector.port)
        assert forwarder.cursor() == 30
        assert forwarder.send_pending() == 0 and collector.connections == 1
        append_events(reopened, 5)
        assert forwarder.send_pending() == 5
        assert collector.seqs() == list(range(1, 36))
        other = Forwarder(reopened, "LOCALHOST", collector.port)  # another collector, own cursor
        assert other.cursor() == 0 and other.key == f"forward_cursor:localhost:{collector.port}"
    finally:
        reopened.close()


def test_a_cursor_past_the_end_of_the_trail_is_refused_as_a_rollback(
    trail: Store, collectors: list[Collector]
) -> None:
    collector = start(collectors)
    with trail.transaction() as conn:
        conn.execute(
            "INSERT INTO meta VALUES (?, ?)", (cursor_key(LOOPBACK, collector.port), "5000")
        )
    with pytest.raises(ForwardCursorAhead, match=r"up to 5000, but this audit trail ends at event"):
        Forwarder(trail, LOOPBACK, collector.port).send_pending()
    assert collector.connections == 0


# -- following ----------------------------------------------------------------------------------


def test_follow_backs_off_exponentially_to_the_cap_then_delivers_when_the_collector_returns(
    trail: Store, collectors: list[Collector]
) -> None:
    port = free_port()
    forwarder = Forwarder(trail, LOOPBACK, port, batch=100, timeout=2)
    stop, six_failures, all_sent = threading.Event(), threading.Event(), threading.Event()
    delays: list[float] = []
    confirmed: list[tuple[int, int]] = []

    def on_error(exc: ForwardError, delay: float) -> None:
        assert "unreachable" in exc.message
        delays.append(delay)
        if len(delays) >= 6:
            six_failures.set()

    def on_forwarded(count: int, cursor: int) -> None:
        confirmed.append((count, cursor))
        if cursor == EVENTS:
            all_sent.set()

    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(
            forwarder.follow(
                0.01, stop, max_backoff=0.08, on_forwarded=on_forwarded, on_error=on_error
            )
        ),
        daemon=True,
    )
    runner.start()
    try:
        assert six_failures.wait(WAIT)
        collector = start(collectors, port)
        assert all_sent.wait(WAIT)
    finally:
        stop.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    assert delays[:6] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    assert confirmed == [(EVENTS, EVENTS)] and result == [EVENTS]
    assert collector.seqs() == list(range(1, EVENTS + 1))


# -- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(directory: Path, name: str, *, ip: str | None, dns: str | None) -> Certificate:
    """A self-signed EC certificate for the collector, valid for `ip` and/or `dns`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    names: list[x509.GeneralName] = []
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    if dns:
        names.append(x509.DNSName(dns))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Certificate(directory / f"{name}.pem", directory / f"{name}.key")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def server_context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


@pytest.mark.parametrize("close_notify", [True, False], ids=["close-notify", "plain-close"])
def test_tls_delivery_to_a_collector_whose_self_signed_certificate_is_trusted(
    trail: Store, collectors: list[Collector], tmp_path: Path, close_notify: bool
) -> None:
    certificate = make_certificate(tmp_path, "collector", ip=LOOPBACK, dns=None)
    collector = start(collectors, tls=server_context(certificate), tls_close_notify=close_notify)
    forwarder = Forwarder(
        trail, LOOPBACK, collector.port, tls=tls_context(certificate.cert), batch=100
    )
    assert forwarder.send_pending() == EVENTS
    assert {m.seq: m.payload for m in collector.messages} == expected_messages(trail)
    assert not collector.problems and collector.connections == 3
    assert forwarder.cursor() == EVENTS


@pytest.mark.parametrize("case", ["untrusted-ca", "wrong-name"])
def test_tls_verification_failure_is_a_clear_error_and_nothing_is_sent(
    trail: Store, collectors: list[Collector], tmp_path: Path, case: str
) -> None:
    served = make_certificate(
        tmp_path,
        "collector",
        ip=LOOPBACK if case == "untrusted-ca" else None,
        dns="siem.example.org",
    )
    trusted = (
        make_certificate(tmp_path, "other", ip=LOOPBACK, dns=None)
        if case == "untrusted-ca"
        else served
    )
    collector = start(collectors, tls=server_context(served))
    forwarder = Forwarder(trail, LOOPBACK, collector.port, tls=tls_context(trusted.cert))
    with pytest.raises(ForwardError) as raised:
        forwarder.send_pending()
    text = str(raised.value)
    assert f"TLS verification of the collector at {LOOPBACK}:{collector.port} failed" in text
    reason = "self-signed certificate" if case == "untrusted-ca" else "IP address mismatch"
    assert reason in text and "--ca FILE" in text and "Nothing was sent" in text
    assert collector.messages == [] and forwarder.cursor() == 0


def test_an_unreadable_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    for path in (bogus, tmp_path / "missing.pem"):
        with pytest.raises(errors.UsageError, match="Cannot read CA certificates"):
            tls_context(path)


def test_a_plaintext_collector_on_the_tls_path_fails_the_handshake_clearly(
    trail: Store, collectors: list[Collector], tmp_path: Path
) -> None:
    certificate = make_certificate(tmp_path, "collector", ip=LOOPBACK, dns=None)
    collector = start(collectors, mode="hangup")
    forwarder = Forwarder(
        trail, LOOPBACK, collector.port, tls=tls_context(certificate.cert), timeout=2
    )
    with pytest.raises(ForwardError, match=r"TLS handshake with the collector at .* failed"):
        forwarder.send_pending()
    assert forwarder.cursor() == 0
