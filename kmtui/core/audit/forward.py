"""Forward the audit trail to a syslog collector: RFC 5424 over TCP (RFC 6587), optionally TLS.

Delivery is at-least-once. Each batch goes out on its own connection; kmtui then closes its
sending side and waits for the collector to close too. Only a clean close, after the peer's
TCP stack has acknowledged every byte and reset nothing, moves the cursor (kept in the `meta`
table) past the batch. A collector that dies mid-batch resets the connection instead: the cursor
stays put and the next attempt resends the whole batch, so the SIEM may hold an event twice, with
the same seq and the same bytes.

A syslog collector sends no acknowledgements, so this is the strongest receipt TCP gives: a
collector that closes (FIN) after its stack acknowledged every byte had read them all, since a
socket closed with unread data, or receiving data after its close, answers with a reset. On
Linux the acknowledgement is read from the send queue (SIOCOUTQ); elsewhere only the clean close
and the absence of a reset are checked. Events a collector read and then lost, or a collector
that half-closes early and stops reading, are beyond what a sender can see.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

from kmtui.core import errors
from kmtui.core.audit import export
from kmtui.core.registry.db import Store
from kmtui.core.safetext import clean

CURSOR_PREFIX = "forward_cursor"
DEFAULT_BATCH = 500
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_BACKOFF = 60.0
_POLL = 0.002  # seconds between looks at the send queue while the last ACK is on its way


def cursor_key(host: str, port: int) -> str:
    return f"{CURSOR_PREFIX}:{host.lower()}:{port}"


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Verify the collector's certificate and name: against `ca_file` only, or the system CAs."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise errors.UsageError(
            f"Cannot read CA certificates from {clean(ca_file)} ({clean(exc)}).",
            "Give a PEM file holding the CA certificate that signed the collector's certificate.",
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 9662 (updating RFC 5425)
    return context


def syslog_message(event: dict[str, Any], fmt: str) -> str:
    """An RFC 5424 message whose structured data carries seq and hashes, whatever the body."""
    body = None if fmt == "syslog" else export.FORMATTERS[fmt](event)
    return export.to_syslog(event, body=body)


def frame(message: str) -> bytes:
    """RFC 6587 octet counting: MSG-LEN SP SYSLOG-MSG, the length in bytes."""
    data = message.encode("utf-8")
    return str(len(data)).encode("ascii") + b" " + data


class Forwarder:
    """Sends the events after this collector's cursor, in batches, each one confirmed."""

    def __init__(
        self,
        store: Store,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        fmt: str = "syslog",
        batch: int = DEFAULT_BATCH,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if fmt not in export.FORMATS:
            raise errors.UsageError(
                f"Unknown format {fmt!r}.", f"Use one of: {', '.join(export.FORMATS)}."
            )
        if not 0 < port < 65536:
            raise errors.UsageError(f"Port {port} is not a TCP port.", "Use 1-65535.")
        if batch < 1 or timeout <= 0:
            raise ValueError("batch must be at least 1 and timeout positive")
        self._store, self.host, self.port = store, host, port
        self._tls, self.fmt, self.batch, self.timeout = tls, fmt, batch, timeout
        self.key = cursor_key(host, port)

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return clean(f"{host}:{self.port}")

    # -- the cursor ---------------------------------------------------------------------------

    def cursor(self) -> int:
        """The last seq this collector confirmed (0: nothing yet)."""
        rows = self._store.rows("SELECT value FROM meta WHERE key = ?", (self.key,))
        if not rows:
            return 0
        try:
            return int(rows[0]["value"])
        except (TypeError, ValueError):
            raise errors.StoreError(
                f"The forwarding cursor for {self.where} is unreadable "
                f"({clean(rows[0]['value'])}).",
                f"Delete the row {self.key!r} from the meta table to resend everything.",
            ) from None

    def _advance(self, seq: int) -> None:
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                "value = excluded.value "
                "WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)",
                (self.key, str(seq)),
            )

    # -- sending ------------------------------------------------------------------------------

    def send_pending(self) -> int:
        """Forward every event after the cursor; the number confirmed (ForwardError if not all)."""
        cursor = self.cursor()
        head = int(self._store.rows("SELECT max(seq) AS seq FROM audit_events")[0]["seq"] or 0)
        if cursor > head:
            raise errors.ForwardCursorAhead(
                f"The collector at {self.where} already received events up to {cursor}, but "
                f"this audit trail ends at event {head}.",
                "The database was replaced by an older copy or cut short: run `kmtui audit "
                "verify` before forwarding anything else.",
            )
        confirmed = 0
        while True:
            last, count, payload = self._next_batch(cursor)
            if not count:
                return confirmed
            try:
                self._deliver(payload, cursor)
            except errors.ForwardError as exc:
                exc.forwarded = confirmed
                raise
            self._advance(last)
            cursor, confirmed = last, confirmed + count

    def _next_batch(self, cursor: int) -> tuple[int, int, bytes]:
        """(last seq, count, framed bytes) of the next batch after `cursor`."""
        # A generator function: closing it ends the read now, before the cursor is written.
        events = cast(
            Generator[dict[str, Any], None, None],
            export.events_since(self._store, cursor, batch=self.batch),
        )
        with contextlib.closing(events):
            chunk = list(itertools.islice(events, self.batch))
        payload = b"".join(frame(syslog_message(event, self.fmt)) for event in chunk)
        return (int(chunk[-1]["seq"]) if chunk else cursor), len(chunk), payload

    def follow(
        self,
        interval: float,
        stop: threading.Event,
        *,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        on_forwarded: Callable[[int, int], None] | None = None,
        on_error: Callable[[errors.ForwardError, float], None] | None = None,
    ) -> int:
        """Forward new events every `interval` seconds until `stop` is set; the total confirmed.

        While the collector is down the wait doubles after each failure, up to `max_backoff`.
        """
        if interval <= 0:
            raise ValueError("interval must be positive")
        cap = max(max_backoff, interval)
        total = failures = 0
        while not stop.is_set():
            try:
                sent = self.send_pending()
            except errors.ForwardError as exc:
                sent, failures = exc.forwarded, failures + 1
                delay = min(cap, interval * 2 ** min(failures - 1, 32))
                if on_error is not None:
                    on_error(exc, delay)
            else:
                failures, delay = 0, interval
            total += sent
            if sent and on_forwarded is not None:
                on_forwarded(sent, self.cursor())
            stop.wait(delay)
        return total

    # -- one connection -----------------------------------------------------------------------

    def _deliver(self, payload: bytes, cursor: int) -> None:
        """Send one batch and wait for the collector's clean close, or raise ForwardError."""
        retry = (
            f"Nothing after event {cursor} was marked as forwarded; the next attempt resends "
            "from there (the collector may then hold some events twice, with the same seq)."
        )
        phase = "connect"
        try:
            with self._connect() as sock:
                phase = "tls"
                if self._tls is not None:
                    sock = self._tls.wrap_socket(sock, server_hostname=self.host)
                with sock:
                    phase = "send"
                    sock.sendall(payload)
                    phase = "confirm"
                    self._confirm(sock, time.monotonic() + self.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise errors.ForwardError(
                f"TLS verification of the collector at {self.where} failed "
                f"({clean(exc.verify_message or exc.reason)}).",
                "Trust the CA that signed its certificate (--ca FILE) and connect by a name or "
                f"address its certificate holds. Nothing was sent. {retry}",
                cursor=cursor,
            ) from None
        except socket.gaierror as exc:
            raise errors.ForwardError(
                f"Cannot resolve the collector's host name {clean(self.host)} ({clean(exc)}).",
                f"Check the name and the DNS or /etc/hosts of this machine. {retry}",
                cursor=cursor,
            ) from None
        except OSError as exc:  # refused, reset, timed out, TLS alerts
            reason = _reason(exc)
            if phase == "connect":
                raise errors.ForwardError(
                    f"The collector at {self.where} is unreachable ({reason}).",
                    "Check that it is running and accepts TCP connections on that port, and "
                    f"that no firewall is in the way. {retry}",
                    cursor=cursor,
                ) from None
            if phase == "tls":
                raise errors.ForwardError(
                    f"The TLS handshake with the collector at {self.where} failed ({reason}).",
                    "Check that it speaks syslog over TLS on this port (RFC 5425, usually 6514) "
                    f"and accepts TLS 1.2 or later. {retry}",
                    cursor=cursor,
                ) from None
            raise self._dropped(phase, reason, retry, cursor) from None

    def _dropped(self, phase: str, reason: str, retry: str, cursor: int) -> errors.ForwardError:
        when = "while the batch was being sent" if phase == "send" else "before confirming"
        return errors.ForwardError(
            f"The collector at {self.where} dropped the connection {when} ({reason}).",
            f"Check the collector's own log (full disk, crash, restart). {retry}",
            cursor=cursor,
        )

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _confirm(self, sock: socket.socket, deadline: float) -> None:
        """Close our side and wait for the collector to close cleanly after reading it all."""
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(_remaining(deadline))
            try:
                sock.unwrap()  # our close_notify, then the collector's (RFC 5425, 4.4)
            except ssl.SSLEOFError:
                # Plain close without close_notify (common): its TCP close is the receipt.
                _await_acknowledged(sock, deadline)
            return
        sock.shutdown(socket.SHUT_WR)
        while True:
            sock.settimeout(_remaining(deadline))
            if not sock.recv(4096):  # a collector has nothing to say; anything else is ignored
                break
        _await_acknowledged(sock, deadline)


def _reason(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError):
        return clean(exc.reason or exc.strerror or exc)
    return clean(exc.strerror or exc)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("no confirmation in time")
    return left


def _unacknowledged(sock: socket.socket) -> int | None:
    """Bytes sent but not yet acknowledged by the peer (Linux SIOCOUTQ); None where unknown."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl
    import termios

    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # TIOCOUTQ == SIOCOUTQ
    return int(struct.unpack("i", raw)[0])


def _await_acknowledged(sock: socket.socket, deadline: float) -> None:
    """The collector closed: accept that only once it acknowledged every byte and reset nothing.

    A collector that closed before reading our data resets it on arrival: the bytes are never
    acknowledged and the socket reports the reset, even though its close (FIN) came first.
    """
    while True:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        if not _unacknowledged(sock):
            return
        _remaining(deadline)  # TimeoutError: some bytes were never acknowledged
        time.sleep(_POLL)
