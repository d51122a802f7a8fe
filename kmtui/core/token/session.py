"""The token session: python-pkcs11 behind one owner, every PKCS#11 call on one dedicated thread.

python-pkcs11 initialises the module with C_Initialize(NULL), so SoftHSM2 turns its own locking off
and two threads calling it at once crash the process. All calls therefore go through `_EXECUTOR`, a
single worker shared by every `Hsm` in the process; callers on other threads block on the result.
The parts that work on the token's objects (keygen, objects, wrapping, sealing, signer, selftest)
hang off the `Hsm` and run through its `run`, so they share that thread and its session.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pkcs11
from pkcs11 import Attribute, Mechanism, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.attributes import AttributeMapper

from kmtui.core import errors
from kmtui.core.models import TokenInfo
from kmtui.core.token import arrays, funclist
from kmtui.core.token.errors import CKR_ERRORS, CKR_OK, CKR_USER_ALREADY_LOGGED_IN, translate
from kmtui.core.token.keygen import Keygen
from kmtui.core.token.objects import Objects
from kmtui.core.token.profile import TokenProfile, probe
from kmtui.core.token.records import SlotInfo
from kmtui.core.token.sealing import Sealing
from kmtui.core.token.selftest import SelfTest
from kmtui.core.token.signer import AuditSigner
from kmtui.core.token.wrapping import Wrapping

P = ParamSpec("P")
T = TypeVar("T")

_hsm_thread: threading.Thread | None = None
_PROFILES: dict[tuple[str, str, str], TokenProfile] = {}
"""Each token's profile, probed once per process (module, serial, label)."""
_CKU_USER = 1


def _mark_thread() -> None:
    global _hsm_thread
    _hsm_thread = threading.current_thread()


_EXECUTOR = ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="kmtui-hsm", initializer=_mark_thread
)


def on_hsm_thread(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn` on the one PKCS#11 thread and return its result (re-entrant)."""
    if threading.current_thread() is _hsm_thread:
        return fn(*args, **kwargs)
    return _EXECUTOR.submit(fn, *args, **kwargs).result()


class _LenientMapper(AttributeMapper):
    """Keeps non-UTF-8 labels as surrogate escapes: a foreign object must not stop a scan; sends
    the unwrap templates of key-encryption keys."""

    def __init__(self) -> None:
        super().__init__()
        arrays.register(self)
        self.register_handler(
            Attribute.LABEL,
            lambda s: s.encode("utf-8", errors="surrogateescape"),
            lambda b: b.decode("utf-8", errors="surrogateescape"),
        )


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _version(value: Any) -> str:
    try:
        return f"{value[0]}.{value[1]}"
    except (TypeError, IndexError):
        return str(value)


def _flag_names(flags: TokenFlag) -> tuple[str, ...]:
    names = [f.name for f in TokenFlag if f.value and f in flags and f.name]
    return tuple(sorted(names))


def module_candidates() -> list[str]:
    """Where distributions put SoftHSM2's module; the first that exists is the default."""
    return [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ]


def default_softhsm_module() -> str:
    return next((p for p in module_candidates() if Path(p).exists()), module_candidates()[0])


class Hsm:
    """Owns the PKCS#11 module, the chosen token and the one logged-in session; the parts that
    work on the token's objects are built over it and reached through it (`hsm.keygen`, ...)."""

    def __init__(
        self,
        module: str,
        *,
        token_label: str = "",
        token_serial: str = "",
        softhsm2_conf: str = "",
        accept_wrappable_keys: bool = False,
    ) -> None:
        if not token_label and not token_serial:
            raise errors.ConfigError(
                "No token chosen.",
                "Set [token] label or serial in config.toml (see `kmtui locate`).",
            )
        self.module = module
        self.token_label = token_label
        self.found_label = token_label
        self.found_serial = token_serial
        self.token_serial = token_serial
        self.softhsm2_conf = softhsm2_conf
        self.accept_wrappable_keys = accept_wrappable_keys
        """config.toml's acknowledgement that this token wraps keys marked non-extractable."""
        self._lib: Any = None
        self._token: Any = None
        self._session: Any = None
        self._mechanisms: frozenset[Mechanism] | None = None
        self._profile: TokenProfile | None = None
        self.objects = Objects(self)
        self.keygen = Keygen(self)
        self.wrapping = Wrapping(self)
        self.sealing = Sealing(self)
        self.signer = AuditSigner(self)
        self.selftest = SelfTest(self)

    @property
    def name(self) -> str:
        if self.token_label and self.token_serial:
            return f"{self.token_label!r} (serial {self.token_serial})"
        return repr(self.token_label) if self.token_label else f"serial {self.token_serial}"

    # -- running on the PKCS#11 thread ------------------------------------------------------

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the PKCS#11 thread, its PKCS#11 failures as kmtui errors (token room use)."""

        def guarded() -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                mapped = translate(exc, self.name)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from None

        return on_hsm_thread(guarded)

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)` on the PKCS#11 thread with the logged-in session (core use only)."""
        return self.run(lambda: fn(self.require_session()))

    def require_session(self) -> Any:
        """The logged-in session, for code already on the PKCS#11 thread."""
        if self._session is None:
            raise errors.NotLoggedIn(
                f"Not logged in to token {self.name}.", "Log in with the user PIN."
            )
        return self._session

    # -- module and token -------------------------------------------------------------------

    def open(self) -> TokenInfo:
        """Load the module and find the configured token; safe to call again."""
        return self.run(self._open)

    def _open(self) -> TokenInfo:
        if self._token is None:
            if not Path(self.module).is_file():
                raise errors.ModuleNotFound(
                    f"PKCS#11 module not found at {self.module}.",
                    "Install the vendor's library (SoftHSM2: apt-get install softhsm2) or set "
                    "[token] module in config.toml (`kmtui locate` shows where it is).",
                )
            if self.softhsm2_conf:
                os.environ["SOFTHSM2_CONF"] = self.softhsm2_conf
            try:
                self._lib = pkcs11.lib(self.module)
            except (OSError, RuntimeError, p11.PKCS11Error) as exc:
                raise errors.ModuleNotFound(
                    f"Could not load the PKCS#11 module {self.module} ({type(exc).__name__}).",
                    "Check that it is the vendor's PKCS#11 library for this machine.",
                ) from None
            self._token = self._find_token()
        return self._info()

    def _find_token(self) -> Any:
        matches = []
        for slot in self._lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
                label, serial = _text(token.label), token.serial.decode("ascii", "replace").strip()
            except (p11.PKCS11Error, UnicodeDecodeError):
                continue
            if self.token_label and label != self.token_label:
                continue
            if self.token_serial and serial != self.token_serial:
                continue
            matches.append((token, label, serial))
        if len(matches) > 1:  # NSS gives every slot the same serial: never pick one at random
            raise errors.TokenNotFound(
                f"{len(matches)} tokens through {self.module} answer to {self.name}: "
                + ", ".join(f"{label!r} (serial {serial})" for _, label, serial in matches)
                + ".",
                "Name the token by label (and serial) in [token] in config.toml.",
            )
        if matches:
            token, self.found_label, self.found_serial = matches[0]
            return token
        seen = (
            ", ".join(f"{s.token_label!r} (serial {s.token_serial})" for s in self._slots())
            or "none"
        )
        raise errors.TokenNotFound(
            f"Token {self.name} was not found through {self.module}.",
            f"Tokens present: {seen}. Check [token] in config.toml, or insert the token.",
        )

    def _info(self) -> TokenInfo:
        token, slot = self._token, self._token.slot
        return TokenInfo(
            label=_text(token.label),
            serial=token.serial.decode("ascii", "replace").strip(),
            manufacturer=_text(token.manufacturer_id),
            model=_text(token.model),
            slot_id=int(slot.slot_id),
            slot_description=_text(slot.slot_description),
            hardware_version=_version(token.hardware_version),
            firmware_version=_version(token.firmware_version),
            library=self.module,
            library_version=_version(self._lib.library_version),
            flags=_flag_names(token.flags),
            logged_in=self._session is not None,
        )

    @property
    def serial(self) -> str:
        """The chosen token's serial, read once when it is found (it never changes)."""
        if self._token is None:
            self.open()
        return self.found_serial

    def info(self) -> TokenInfo:
        return self.run(self._open)

    def slots(self) -> list[SlotInfo]:
        return self.run(self._list_slots)

    def _list_slots(self) -> list[SlotInfo]:
        if self._lib is None:
            with suppress(errors.TokenNotFound):
                self._open()
        return self._slots()

    def _slots(self) -> list[SlotInfo]:
        result = []
        for slot in self._lib.get_slots():
            present = bool(slot.flags & pkcs11.SlotFlag.TOKEN_PRESENT)
            label = serial = ""
            initialized = False
            if present:
                try:
                    token = slot.get_token()
                    label = _text(token.label)
                    serial = token.serial.decode("ascii", "replace").strip()
                    initialized = bool(token.flags & TokenFlag.TOKEN_INITIALIZED)
                except (p11.PKCS11Error, UnicodeDecodeError):
                    label = "?"
            result.append(
                SlotInfo(
                    slot_id=int(slot.slot_id),
                    description=_text(slot.slot_description),
                    manufacturer=_text(slot.manufacturer_id),
                    token_present=present,
                    token_label=label,
                    token_serial=serial,
                    token_initialized=initialized,
                )
            )
        return result

    def mechanisms(self) -> list[str]:
        return sorted(m.name if isinstance(m, Mechanism) else hex(m) for m in self._mechs())

    def supports(self, mechanism: Mechanism) -> bool:
        return mechanism in self._mechs()

    def _mechs(self) -> frozenset[Mechanism]:
        if self._mechanisms is None:
            self._mechanisms = frozenset(
                self.run(lambda: self._token_or_open().slot.get_mechanisms())
            )
        return self._mechanisms

    def _token_or_open(self) -> Any:
        if self._token is None:
            self._open()
        return self._token

    # -- what the token can do ---------------------------------------------------------------

    @property
    def profile(self) -> TokenProfile:
        """What this token can do, probed at the first log-in of this process (`profile.py`)."""
        if self._profile is None:
            self.run(self._probe)
        assert self._profile is not None
        return self._profile

    def _probe(self) -> None:
        key = (self.module, self.found_serial, self.found_label)
        if key not in _PROFILES:
            _PROFILES[key] = probe(self.require_session(), self._mechs())
        self._profile = _PROFILES[key]

    # -- login --------------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._session is not None

    def login(self, pin: str) -> TokenInfo:
        """Log in as the user; a failed login leaves no session behind."""
        return self.run(self._login, pin)

    def _login(self, pin: str) -> TokenInfo:
        token = self._token_or_open()
        if self._session is not None:
            return self._info()
        if TokenFlag.USER_PIN_LOCKED.name in self._pin_flags():
            raise translate(p11.PinLocked(), self.name) or errors.PinLocked("PIN locked.")
        if funclist.entry(self.module) is None:  # p11-kit-proxy: python-pkcs11's own log-in
            try:
                self._session = token.open(rw=True, user_pin=pin, attribute_mapper=_LenientMapper())
            except p11.UserAlreadyLoggedIn:  # by another holder in this process: a session
                self._session = token.open(rw=True, attribute_mapper=_LenientMapper())
            except p11.PKCS11Error as exc:  # python-pkcs11 keeps that session open (no handle)
                raise self._refused(exc) from None
        else:
            # Open first, then C_Login on that session: python-pkcs11's open(user_pin=...) leaks
            # the session whose login failed, which would later block SO login. This one is closed.
            session = token.open(rw=True, attribute_mapper=_LenientMapper())
            try:
                self._c_login(session.handle, pin)
            except p11.PKCS11Error as exc:
                session.close()
                raise self._refused(exc) from None
            self._session = session
        self._probe()
        return self._info()

    def _refused(self, exc: p11.PKCS11Error) -> errors.KmtuiError:
        """The failed log-in as a kmtui error, with what the token's own PIN counter says."""
        mapped = translate(exc, self.name) or errors.HsmError(str(exc))
        if isinstance(mapped, errors.PinIncorrect):
            flags: tuple[str, ...] = ()
            with suppress(p11.PKCS11Error):  # the refusal stands even if the token says no more
                flags = self._pin_flags()
            if TokenFlag.USER_PIN_FINAL_TRY.name in flags:
                mapped.hint = "The token says one more failure will lock the PIN."
            elif TokenFlag.USER_PIN_COUNT_LOW.name in flags:
                mapped.hint = "The token counted the failure and may lock the PIN after more."
        return mapped

    def login_protected(self) -> TokenInfo:
        """Log in through the token's protected authentication path (its PIN pad, PED or quorum
        cards): C_Login with a NULL PIN, through python-pkcs11's function list."""
        return self.run(self._login_protected)

    def _login_protected(self) -> TokenInfo:
        token = self._token_or_open()
        if self._session is not None:
            return self._info()
        if not token.flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
            raise errors.HsmError(
                f"Token {self.name} has no protected authentication path (PIN pad, PED or "
                "quorum log-in).",
                'Set [token] login = "split" in config.toml: two custodians enter PIN halves.',
            )
        # python-pkcs11 gives no handle of a session whose protected log-in failed (a PED that
        # timed out): that one session stays open until the process ends.
        try:
            self._session = token.open(
                rw=True, user_pin=pkcs11.PROTECTED_AUTH, attribute_mapper=_LenientMapper()
            )
        except p11.PKCS11Error as exc:
            raise self._refused(exc) from None
        self._probe()
        return self._info()

    def pin_flags(self) -> tuple[str, ...]:
        """The token's user PIN flags read now (COUNT_LOW, FINAL_TRY, LOCKED, TO_BE_CHANGED):
        what the token's own counter says after a failed log-in."""
        return self.run(self._pin_flags)

    def _pin_flags(self) -> tuple[str, ...]:
        flags = self._token_or_open().slot.get_token().flags
        return tuple(
            f.name
            for f in (
                TokenFlag.USER_PIN_COUNT_LOW,
                TokenFlag.USER_PIN_FINAL_TRY,
                TokenFlag.USER_PIN_LOCKED,
                TokenFlag.USER_PIN_TO_BE_CHANGED,
            )
            if f in flags and f.name
        )

    def set_user_pin(self, old_pin: str, new_pin: str) -> None:
        """C_SetPIN in a fresh read-write session that is not logged in (the token checks
        `old_pin` as the user PIN), through python-pkcs11's function list."""
        self.run(self._set_user_pin, old_pin, new_pin)

    def _set_user_pin(self, old_pin: str, new_pin: str) -> None:
        token = self._token_or_open()
        if self._session is not None:
            raise errors.UsageError(
                "The user PIN is set before anyone logs in.", "Log out first; nothing changed."
            )
        session = token.open(rw=True)
        try:
            session.set_pin(old_pin, new_pin)
        except (p11.PinLenRange, p11.PinInvalid):
            raise errors.UsageError(
                f"Token {self.name} does not accept a PIN of {len(new_pin)} characters made of "
                "these halves.",
                "Choose shorter halves (or see the token's PIN rules); the PIN was not changed.",
            ) from None
        except p11.PinIncorrect as exc:
            error = self._refused(exc)
            error.message = f"Token {self.name} did not accept the initial user PIN."
            raise error from None
        finally:
            session.close()

    def _c_login(self, handle: int, pin: str) -> None:
        """C_Login(CKU_USER) on an open session, through the module's function list;
        already logged in counts as success."""
        rv = funclist.login(self.module, handle, _CKU_USER, pin)
        if rv in (CKR_OK, CKR_USER_ALREADY_LOGGED_IN):
            return
        raise CKR_ERRORS.get(rv or 0, p11.GeneralError)()

    def logout(self) -> None:
        self.run(self._logout)

    def _logout(self) -> None:
        """Close the session; the handles and head objects the parts remember die with it."""
        session, self._session = self._session, None
        self.objects.forget()
        self.signer.forget()
        if session is not None:
            with suppress(p11.PKCS11Error):
                session.close()

    def close(self) -> None:
        """Log out and forget the module (it stays loaded: python-pkcs11 caches it)."""
        if self._lib is not None:
            self.logout()
        self._token = None
        self._lib = None
