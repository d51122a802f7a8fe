"""The token: python-pkcs11 behind one class, every PKCS#11 call on one dedicated thread.

python-pkcs11 initialises the module with C_Initialize(NULL), so SoftHSM2 turns its own locking off
and two threads calling it at once crash the process. All calls therefore go through `_EXECUTOR`, a
single worker shared by every `Hsm` in the process; callers on other threads block on the result.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11
from pkcs11.attributes import AttributeMapper
from pkcs11.util.ec import encode_named_curve_parameters

from kmtui.core import errors
from kmtui.core.token import templates
from kmtui.core.token.templates import KeyTemplate, violations

P = ParamSpec("P")
T = TypeVar("T")

_hsm_thread: threading.Thread | None = None
SEAL_KEY_ID = b"kmtui:sys-seal:1"
"""CKA_ID of the token key that seals TOTP seeds; `kmtui:sys-*` ids are kmtui's own objects."""
AUDIT_KEY_ID = b"kmtui:sys-audit:1"
"""CKA_ID of the EC P-256 key pair that signs audit checkpoints."""
HEAD_LABEL = "kmtui-audit-head"
"""CKA_LABEL of the data object mirroring the audit head (data objects refuse CKA_ID)."""


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
    """Keeps non-UTF-8 labels as surrogate escapes: a foreign object must not stop a scan."""

    def __init__(self) -> None:
        super().__init__()
        self.register_handler(
            Attribute.LABEL,
            lambda s: s.encode("utf-8", errors="surrogateescape"),
            lambda b: b.decode("utf-8", errors="surrogateescape"),
        )


# --- what the token layer returns (plain data, safe to hand to any layer) ------------------


@dataclass(frozen=True)
class SlotInfo:
    slot_id: int
    description: str
    manufacturer: str
    token_present: bool
    token_label: str = ""
    token_serial: str = ""
    token_initialized: bool = False


@dataclass(frozen=True)
class TokenInfo:
    label: str
    serial: str
    manufacturer: str
    model: str
    slot_id: int
    slot_description: str
    hardware_version: str
    firmware_version: str
    library: str
    library_version: str
    flags: tuple[str, ...]
    logged_in: bool


@dataclass(frozen=True)
class ObjectInfo:
    """One token object as read defensively: any attribute may be missing."""

    handle: int
    object_class: str
    cka_id: bytes
    label: str
    label_is_utf8: bool
    key_type: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratedKey:
    cka_id: bytes
    object_classes: tuple[str, ...]
    kcv: str = ""
    fingerprint: str = ""
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)


# --- error translation ---------------------------------------------------------------------

_REMOVED = (
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceError,
)
_GONE = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.NoSuchKey)


def _translate(exc: BaseException, token: str) -> errors.KmtuiError | None:
    """A kmtui error for a python-pkcs11 one; None when it is not a PKCS#11 failure."""
    if isinstance(exc, errors.KmtuiError):
        return exc
    if isinstance(exc, p11.PinIncorrect):
        return errors.PinIncorrect(
            f"The PIN was not accepted by token {token}.",
            "Check it and try again; repeated failures may lock the token.",
        )
    if isinstance(exc, p11.PinLocked):
        return errors.PinLocked(
            f"The user PIN of token {token} is locked.",
            "The security officer must unlock or reset it; kmtui cannot.",
        )
    if isinstance(exc, (p11.PinInvalid, p11.PinLenRange)):
        return errors.PinIncorrect(f"That is not a valid PIN for token {token}.", "Check it.")
    if isinstance(exc, p11.UserNotLoggedIn):
        return errors.NotLoggedIn(f"Not logged in to token {token}.", "Log in with the user PIN.")
    if isinstance(exc, _REMOVED):
        return errors.TokenRemoved(
            f"Token {token} is no longer reachable ({type(exc).__name__}).",
            "Check that it is inserted and powered, then log in again.",
        )
    if isinstance(exc, (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.FunctionNotSupported)):
        return errors.MechanismNotSupported(
            f"Token {token} does not support this operation ({type(exc).__name__}).",
            "Choose another algorithm or a token that offers it (Token pane lists its mechanisms).",
        )
    if isinstance(exc, _GONE):
        return errors.ObjectGone(
            f"A key object is no longer on token {token}.",
            "Run `kmtui reconcile` to see what changed.",
        )
    if isinstance(exc, p11.PKCS11Error):
        return errors.HsmError(
            f"Token {token} refused the operation ({type(exc).__name__}).",
            "Nothing was changed on the token by kmtui; see the audit trail.",
        )
    return None


_CKU_USER = 1
_CKR_OK = 0
_CKR_USER_ALREADY_LOGGED_IN = 0x100
_CKR_ERRORS: dict[int, type[p11.PKCS11Error]] = {
    0x30: p11.DeviceError,
    0x32: p11.DeviceRemoved,
    0xA0: p11.PinIncorrect,
    0xA1: p11.PinInvalid,
    0xA2: p11.PinLenRange,
    0xA3: p11.PinExpired,
    0xA4: p11.PinLocked,
    0xB3: p11.SessionHandleInvalid,
    0xE0: p11.TokenNotPresent,
    0x102: p11.UserPinNotInitialized,
    0x104: p11.AnotherUserAlreadyLoggedIn,
}


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
    """Owns the PKCS#11 module, the chosen token and the one logged-in session."""

    def __init__(
        self,
        module: str,
        *,
        token_label: str = "",
        token_serial: str = "",
        softhsm2_conf: str = "",
    ) -> None:
        if not token_label and not token_serial:
            raise errors.ConfigError(
                "No token chosen.",
                "Set [token] label or serial in config.toml (see `kmtui locate`).",
            )
        self.module = module
        self.token_label = token_label
        self.found_label = token_label
        self.token_serial = token_serial
        self.softhsm2_conf = softhsm2_conf
        self._lib: Any = None
        self._token: Any = None
        self._session: Any = None
        self._mechanisms: frozenset[Mechanism] | None = None
        self._cdll: Any = None
        self._handles: dict[tuple[bytes, ObjectClass], Any] = {}
        self._heads: dict[tuple[str, str], Any] = {}

    @property
    def name(self) -> str:
        return repr(self.token_label) if self.token_label else f"serial {self.token_serial}"

    # -- running on the PKCS#11 thread ------------------------------------------------------

    def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def guarded() -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                mapped = _translate(exc, self.name)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from None

        return on_hsm_thread(guarded)

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run `fn(session)` on the PKCS#11 thread with the logged-in session (core use only)."""
        return self._run(lambda: fn(self._require_session()))

    # -- module and token -------------------------------------------------------------------

    def open(self) -> TokenInfo:
        """Load the module and find the configured token; safe to call again."""
        return self._run(self._open)

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
        for slot in self._lib.get_slots(token_present=True):
            try:
                token = slot.get_token()
                label, serial = _text(token.label), token.serial.decode("ascii", "replace").strip()
            except (p11.PKCS11Error, UnicodeDecodeError):
                continue
            if (self.token_label and label == self.token_label) or (
                self.token_serial and serial == self.token_serial
            ):
                self.found_label = label  # when configured by serial, the label is learnt here
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

    def info(self) -> TokenInfo:
        return self._run(self._open)

    def slots(self) -> list[SlotInfo]:
        return self._run(self._list_slots)

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
                self._run(lambda: self._token_or_open().slot.get_mechanisms())
            )
        return self._mechanisms

    def _token_or_open(self) -> Any:
        if self._token is None:
            self._open()
        return self._token

    # -- login --------------------------------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        return self._session is not None

    def login(self, pin: str) -> TokenInfo:
        """Log in as the user; a failed login leaves no session behind."""
        return self._run(self._login, pin)

    def _login(self, pin: str) -> TokenInfo:
        token = self._token_or_open()
        if self._session is not None:
            return self._info()
        if token.flags & TokenFlag.USER_PIN_LOCKED:
            raise _translate(p11.PinLocked(), self.name) or errors.PinLocked("PIN locked.")
        # Open first, then C_Login on that session: python-pkcs11's open(user_pin=...) leaks the
        # session whose login failed, which would later block SO login. This one is closed.
        session = token.open(rw=True, attribute_mapper=_LenientMapper())
        try:
            self._c_login(session.handle, pin)
        except p11.PKCS11Error as exc:
            session.close()
            mapped = _translate(exc, self.name) or errors.HsmError(str(exc))
            if isinstance(mapped, errors.PinIncorrect):
                flags = token.flags
                if flags & TokenFlag.USER_PIN_FINAL_TRY:
                    mapped.hint = "One more failure will lock the PIN."
                elif flags & TokenFlag.USER_PIN_COUNT_LOW:
                    mapped.hint = "Several failures so far: the token may lock the PIN soon."
            raise mapped from None
        self._session = session
        return self._info()

    def _c_login(self, handle: int, pin: str) -> None:
        """C_Login(CKU_USER) through the same loaded module; already logged in counts as success."""
        if self._cdll is None:
            cdll = ctypes.CDLL(self.module)
            cdll.C_Login.argtypes = [
                ctypes.c_ulong,
                ctypes.c_ulong,
                ctypes.c_char_p,
                ctypes.c_ulong,
            ]
            cdll.C_Login.restype = ctypes.c_ulong
            self._cdll = cdll
        data = pin.encode("utf-8")
        rv = int(self._cdll.C_Login(handle, _CKU_USER, data, len(data)))
        if rv in (_CKR_OK, _CKR_USER_ALREADY_LOGGED_IN):
            return
        raise _CKR_ERRORS.get(rv, p11.GeneralError)()

    def logout(self) -> None:
        self._run(self._logout)

    def _logout(self) -> None:
        session, self._session = self._session, None
        self._handles.clear()
        self._heads.clear()
        if session is not None:
            with suppress(p11.PKCS11Error):
                session.close()

    def close(self) -> None:
        """Log out and forget the module (it stays loaded: python-pkcs11 caches it)."""
        if self._lib is not None:
            self.logout()
        self._token = None
        self._lib = None

    def _require_session(self) -> Any:
        if self._session is None:
            raise errors.NotLoggedIn(
                f"Not logged in to token {self.name}.", "Log in with the user PIN."
            )
        return self._session

    # -- keys ---------------------------------------------------------------------------------

    def generate(self, template: KeyTemplate) -> GeneratedKey:
        """Create a key (or key pair) from a kmtui template and prove it came out as asked."""
        return self._run(self._generate, template)

    def _generate(self, template: KeyTemplate) -> GeneratedKey:
        session = self._require_session()
        if not self.supports(template.mechanism):
            raise errors.MechanismNotSupported(
                f"Token {self.name} cannot generate {template.algorithm.name} keys "
                f"({template.mechanism.name} is not offered).",
                "Choose another algorithm; the Token pane lists what this token supports.",
            )
        return self._prove(template, create_objects(session, template))

    def adopt(self, template: KeyTemplate) -> GeneratedKey:
        """Prove a key another session made (the security officer's trusted KEK, or a trusted
        recipient public key) as if ours."""
        cls = ObjectClass.PUBLIC_KEY if template.public else ObjectClass.SECRET_KEY

        def run() -> GeneratedKey:
            obj = self._find(template.cka_id, cls)
            if obj is None:
                raise errors.ObjectGone(
                    f"The security officer's key {template.label!r} is not on the token.",
                    "Run the creation again.",
                )
            return self._prove(template, {cls: obj})

        return self._run(run)

    def create_public(self, template: KeyTemplate) -> GeneratedKey:
        """A public key given by value (a recipient's, from PEM), created and proved."""

        def run() -> GeneratedKey:
            return self._prove(template, create_objects(self._require_session(), template))

        return self._run(run)

    def _prove(self, template: KeyTemplate, objects: dict[ObjectClass, Any]) -> GeneratedKey:
        """Read every attribute back in one call per object; refuse a key that differs."""
        spec = template.algorithm
        read_back: dict[str, dict[str, Any]] = {}
        differences: dict[str, tuple[object, object]] = {}
        extra = {
            ObjectClass.SECRET_KEY: [Attribute.CHECK_VALUE],
            ObjectClass.PUBLIC_KEY: _PUBLIC_VALUE_ATTRS.get(spec.key_type, []),
            ObjectClass.PRIVATE_KEY: [],
        }
        values: dict[ObjectClass, dict[Attribute, Any]] = {}
        for cls, obj in objects.items():
            self._handles[(template.cka_id, cls)] = obj
            expected = template.expected(cls)
            actual = self._read_attributes(obj, list(expected) + extra[cls])
            values[cls] = actual
            read_back[cls.name] = {a.name: actual.get(a) for a in expected}
            for attr, want in expected.items():
                if actual.get(attr) != want:
                    differences[f"{cls.name}.{attr.name}"] = (want, actual.get(attr))
            if problems := violations(cls, actual):
                differences[f"{cls.name}.invariants"] = ("none", "; ".join(problems))
        if differences:
            raise errors.TemplateMismatch(
                f"Token {self.name} created key {template.label!r} with attributes other than "
                f"requested ({', '.join(sorted(differences))}).",
                "Do not use this key: it is quarantined. Report the token model to the vendor.",
                differences,
            )
        if spec.symmetric:
            secret = values[ObjectClass.SECRET_KEY]
            check = secret.get(Attribute.CHECK_VALUE) or b""
            kcv = (
                bytes(check[:3]).hex().upper()
                if check
                else self._kcv(objects[ObjectClass.SECRET_KEY])
            )
            return GeneratedKey(
                template.cka_id, (ObjectClass.SECRET_KEY.name,), kcv=kcv, attributes=read_back
            )
        public = values[ObjectClass.PUBLIC_KEY]
        return GeneratedKey(
            template.cka_id,
            tuple(cls.name for cls in objects),
            fingerprint=_fingerprint(spec.key_type, public),
            attributes=read_back,
        )

    def _read_attributes(self, obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
        """All attributes in one C_GetAttributeValue call (10x faster than one call each)."""
        return {Attribute(a): v for a, v in obj.get_attributes(attrs).items()}

    def find(self, cka_id: bytes, object_class: ObjectClass | None = None) -> ObjectInfo | None:
        return self._run(lambda: self._describe_opt(self._find(cka_id, object_class)))

    def _find(self, cka_id: bytes, object_class: ObjectClass | None = None) -> Any:
        query: dict[Attribute, Any] = {Attribute.ID: cka_id}
        if object_class is not None:
            query[Attribute.CLASS] = object_class
        found = list(self._require_session().get_objects(query))
        if not found:
            return None
        if object_class is None:
            # A key pair shares one CKA_ID: prefer the object that holds the secret.
            order = [ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]
            found.sort(key=lambda o: order.index(o.object_class) if o.object_class in order else 9)
        return found[0]

    def _get_key(self, cka_id: bytes, object_class: ObjectClass) -> Any:
        """The object for (CKA_ID, class), from the handle cache when this session has seen it."""
        cached = self._handles.get((cka_id, object_class))
        if cached is not None:
            return cached
        obj = self._find(cka_id, object_class)
        if obj is None:
            raise errors.ObjectGone(
                f"No object with CKA_ID {cka_id!r} on token {self.name}.",
                "Run `kmtui reconcile` to see what changed.",
            )
        self._handles[(cka_id, object_class)] = obj
        return obj

    def _with_key(self, cka_id: bytes, object_class: ObjectClass, fn: Callable[[Any], T]) -> T:
        """Run `fn(obj)`; a stale cached handle (object destroyed elsewhere) is looked up again."""
        try:
            return fn(self._get_key(cka_id, object_class))
        except _GONE:
            if self._handles.pop((cka_id, object_class), None) is None:
                raise
            return fn(self._get_key(cka_id, object_class))

    def objects(self) -> list[ObjectInfo]:
        """Every object the user can see, read defensively (foreign objects never stop the scan)."""
        return self._run(self._objects)

    def _objects(self) -> list[ObjectInfo]:
        result = []
        for obj in self._iter_objects():
            info = self._describe(obj)
            if info is not None:
                result.append(info)
        return result

    def _iter_objects(self) -> Iterator[Any]:
        it = iter(self._require_session().get_objects())
        while True:
            try:
                yield next(it)
            except StopIteration:
                return
            except (p11.PKCS11Error, KeyError, ValueError, UnicodeDecodeError):
                continue

    def _describe_opt(self, obj: Any) -> ObjectInfo | None:
        return None if obj is None else self._describe(obj)

    def _describe(self, obj: Any) -> ObjectInfo | None:
        raw = _raw_attributes(
            obj, [Attribute.CLASS, Attribute.ID, Attribute.LABEL, Attribute.KEY_TYPE]
        )
        try:
            label_bytes = raw.get(Attribute.LABEL, b"")
            label, utf8 = label_bytes.decode("utf-8"), True
        except UnicodeDecodeError:
            label, utf8 = label_bytes.decode("utf-8", "replace"), False
        cls_raw = raw.get(Attribute.CLASS)
        kt_raw = raw.get(Attribute.KEY_TYPE)
        return ObjectInfo(
            handle=int(obj.handle or 0),
            object_class=_enum_name(ObjectClass, cls_raw),
            cka_id=raw.get(Attribute.ID, b""),
            label=label,
            label_is_utf8=utf8,
            key_type=_enum_name(KeyType, kt_raw) if kt_raw is not None else "",
        )

    def attributes(self, cka_id: bytes, object_class: ObjectClass) -> dict[str, Any]:
        """The readable attributes of one object, for display (sensitive values never readable)."""
        wanted = [
            Attribute.LABEL,
            Attribute.ID,
            Attribute.KEY_TYPE,
            Attribute.TOKEN,
            Attribute.PRIVATE,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.WRAP_WITH_TRUSTED,
            Attribute.MODIFIABLE,
            Attribute.COPYABLE,
            Attribute.DESTROYABLE,
            Attribute.LOCAL,
            Attribute.ALWAYS_SENSITIVE,
            Attribute.NEVER_EXTRACTABLE,
            Attribute.TRUSTED,
            *_USAGE_ATTRS,
        ]

        def read(obj: Any) -> dict[str, Any]:
            # One C_GetAttributeValue call; python-pkcs11 leaves out what the token will not
            # give (absent or sensitive). One call per attribute only if that call fails.
            try:
                values = {Attribute(a): v for a, v in obj.get_attributes(wanted).items()}
            except (p11.PKCS11Error, UnicodeDecodeError):
                values = {}
                for attr in wanted:
                    try:
                        values[attr] = obj[attr]
                    except (p11.AttributeTypeInvalid, p11.AttributeSensitive):
                        continue
            out: dict[str, Any] = {}
            for attr in wanted:
                if attr not in values:
                    continue
                value = values[attr]
                if isinstance(value, str):
                    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                out[attr.name] = value
            return out

        return self._run(lambda: self._with_key(cka_id, object_class, read))

    def kcv(self, cka_id: bytes) -> str:
        """Key check value of a symmetric key, as 6 hex digits."""
        return self._run(lambda: self._with_key(cka_id, ObjectClass.SECRET_KEY, self._kcv))

    def _kcv(self, key: Any) -> str:
        value = key[Attribute.CHECK_VALUE] or b""
        if value:
            return bytes(value[:3]).hex().upper()
        attrs = key.get_attributes([Attribute.KEY_TYPE, Attribute.ENCRYPT])
        if attrs.get(Attribute.KEY_TYPE) == KeyType.AES and attrs.get(Attribute.ENCRYPT):
            # SoftHSM leaves CKA_CHECK_VALUE empty on unwrapped keys: compute the standard AES KCV.
            return bytes(key.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)[:3]).hex().upper()
        raise errors.HsmError(
            f"Token {self.name} gives no check value for this key, and it cannot encrypt one.",
            "Compare keys by their fingerprint in the registry instead.",
        )

    def fingerprint(self, cka_id: bytes) -> str:
        """SHA-256 of the public key's DER SubjectPublicKeyInfo."""

        def read(public: Any) -> str:
            key_type = public[Attribute.KEY_TYPE]
            return _fingerprint(
                key_type, self._read_attributes(public, _PUBLIC_VALUE_ATTRS[key_type])
            )

        return self._run(lambda: self._with_key(cka_id, ObjectClass.PUBLIC_KEY, read))

    def destroy(self, cka_id: bytes) -> int:
        """Destroy every object carrying this CKA_ID; returns how many went."""

        def run() -> int:
            count = 0
            for obj in list(self._require_session().get_objects({Attribute.ID: cka_id})):
                obj.destroy()
                count += 1
            for cls in ObjectClass:
                self._handles.pop((cka_id, cls), None)
            return count

        return self._run(run)

    # -- self-checks (change nothing on the token) -----------------------------------------

    def self_test(self, cka_id: bytes, algorithm: str, purpose: str) -> dict[str, str]:
        """Exercise one key version with a random test vector; each check is 'pass' or 'fail'."""
        spec = templates.algorithm(algorithm)
        return self._run(self._self_test, cka_id, spec, templates.Purpose(purpose))

    def _self_test(
        self, cka_id: bytes, spec: templates.AlgorithmSpec, purpose: templates.Purpose
    ) -> dict[str, str]:
        session = self._require_session()
        vector = bytes(session.generate_random(256))
        out: dict[str, str] = {}

        def check(name: str, fn: Callable[[], bool]) -> None:
            try:
                out[name] = "pass" if fn() else "fail"
            except p11.PKCS11Error:  # any exception from a verify is a failed check
                out[name] = "fail"

        if spec.symmetric:
            key = self._get_key(cka_id, ObjectClass.SECRET_KEY)
            if purpose == templates.Purpose.ENCRYPT:

                def round_trip() -> bool:
                    nonce = bytes(session.generate_random(96))
                    sealed = key.encrypt(
                        vector, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce)
                    )
                    return (
                        bytes(
                            key.decrypt(
                                sealed,
                                mechanism=Mechanism.AES_GCM,
                                mechanism_param=GCMParams(nonce),
                            )
                        )
                        == vector
                    )

                check("encrypt-decrypt", round_trip)
            elif purpose == templates.Purpose.WRAP:
                check("wrap-unwrap", lambda: self._wrap_probe(session, key))
            else:

                def mac() -> bool:
                    tag = key.sign(vector, mechanism=Mechanism.SHA256_HMAC)
                    return bool(key.verify(vector, tag, mechanism=Mechanism.SHA256_HMAC))

                check("mac-verify", mac)
            out["kcv"] = self._kcv(key)
        elif purpose == templates.Purpose.WRAP:  # a recipient's public key: no private half here
            public = self._get_key(cka_id, ObjectClass.PUBLIC_KEY)
            check(
                "wrap-only", lambda: not public[Attribute.ENCRYPT] and bool(public[Attribute.WRAP])
            )
            out["fingerprint"] = _fingerprint(
                KeyType.RSA, self._read_attributes(public, _PUBLIC_VALUE_ATTRS[KeyType.RSA])
            )
        else:
            private = self._get_key(cka_id, ObjectClass.PRIVATE_KEY)
            public = self._get_key(cka_id, ObjectClass.PUBLIC_KEY)
            if spec.key_type == KeyType.RSA:
                mech, data = Mechanism.SHA256_RSA_PKCS, vector
            else:  # SoftHSM has no CKM_ECDSA_SHA256: hash here, sign the digest with CKM_ECDSA
                mech, data = Mechanism.ECDSA, hashlib.sha256(vector).digest()

            def sign_verify() -> bool:
                signature = private.sign(data, mechanism=mech)
                return bool(public.verify(data, signature, mechanism=mech))

            check("sign-verify", sign_verify)
            key_type = public[Attribute.KEY_TYPE]
            out["fingerprint"] = _fingerprint(
                key_type, self._read_attributes(public, _PUBLIC_VALUE_ATTRS[key_type])
            )
        return out

    def _wrap_probe(self, session: Any, kek: Any) -> bool:
        """Wrap a throw-away session key with the KEK, unwrap it, compare the two KCVs."""
        probe = session.generate_key(
            KeyType.AES, 128, capabilities=0, template=templates.session_probe()
        )
        unwrapped = None
        try:
            blob = kek.wrap_key(probe, mechanism=Mechanism.AES_KEY_WRAP)
            unwrapped = kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                blob,
                mechanism=Mechanism.AES_KEY_WRAP,
                capabilities=0,
                template=templates.unwrapped_probe(),
            )
            zero = bytes(16)
            return bytes(probe.encrypt(zero, mechanism=Mechanism.AES_ECB)) == bytes(
                unwrapped.encrypt(zero, mechanism=Mechanism.AES_ECB)
            )
        finally:
            probe.destroy()
            if unwrapped is not None:
                unwrapped.destroy()

    # -- sealing (TOTP seeds and other small secrets kept in the database) ----------------

    def _seal_key(self) -> Any:
        cached = self._handles.get((SEAL_KEY_ID, ObjectClass.SECRET_KEY))
        if cached is not None:
            return cached
        if self._find(SEAL_KEY_ID, ObjectClass.SECRET_KEY) is None:
            self._generate(
                templates.build("AES-256", "encrypt", cka_id=SEAL_KEY_ID, label="kmtui sealing key")
            )
        return self._get_key(SEAL_KEY_ID, ObjectClass.SECRET_KEY)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-GCM under the token's sealing key: 12-byte nonce, then ciphertext and tag."""

        def run() -> bytes:
            key = self._seal_key()
            nonce = bytes(self._require_session().generate_random(96))
            sealed = key.encrypt(
                plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(nonce, aad)
            )
            return nonce + bytes(sealed)

        return self._run(run)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of `seal`; any failure (tampered blob, wrong aad) is one clear refusal."""

        def run() -> bytes:
            key = self._seal_key()
            try:
                return bytes(
                    key.decrypt(
                        blob[12:],
                        mechanism=Mechanism.AES_GCM,
                        mechanism_param=GCMParams(blob[:12], aad),
                    )
                )
            except p11.PKCS11Error:  # SoftHSM reports a bad tag as a bare GeneralError
                raise errors.HsmError(
                    "A sealed secret failed its integrity check.",
                    "The database record was altered or belongs to another token.",
                ) from None

        return self._run(run)

    # -- distribution: wrap, unwrap, keys entered from components -----------------------------

    def wrap(self, target: bytes, wrapper: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        """The target key (secret) wrapped by the wrapping key (a KEK, or a recipient's public
        key with `param` its OAEP parameters); the token enforces the rules."""

        def run() -> bytes:
            key = self._get_key(target, ObjectClass.SECRET_KEY)
            kek = self._wrapping_key(wrapper)
            try:
                return bytes(kek.wrap_key(key, mechanism=mechanism, mechanism_param=param))
            except (p11.KeyUnextractable, p11.KeyNotWrappable):
                raise errors.PolicyRefused(
                    "The token refused to wrap this key with that wrapping key.",
                    "Exportable keys can only be wrapped by a trusted key-encryption key or "
                    "recipient key (made or imported with --trusted by the security officer).",
                ) from None

        return self._run(run)

    def _wrapping_key(self, wrapper: bytes) -> Any:
        obj = self._find(wrapper, ObjectClass.SECRET_KEY) or self._find(
            wrapper, ObjectClass.PUBLIC_KEY
        )
        if obj is None:
            raise errors.ObjectGone(f"No wrapping key with CKA_ID {wrapper!r} on the token.")
        return obj

    def unwrap(
        self, wrapper: bytes, blob: bytes, mechanism: Mechanism, template: KeyTemplate
    ) -> None:
        """Unwrap onto the token as `template` says (check `kcv_of_blob` first: unwrapped keys
        carry no CKA_CHECK_VALUE on SoftHSM, and a key-encryption key may not encrypt)."""

        def run() -> None:
            key = self._unwrap(
                wrapper, blob, mechanism, template, templates.unwrap_target(template)
            )
            self._handles[(template.cka_id, ObjectClass.SECRET_KEY)] = key

        self._run(run)

    def _unwrap(
        self,
        wrapper: bytes,
        blob: bytes,
        mechanism: Mechanism,
        template: KeyTemplate,
        attrs: dict[Attribute, Any],
    ) -> Any:
        """C_UnwrapKey under the KEK; any refusal means a damaged blob or the wrong KEK."""
        kek = self._get_key(wrapper, ObjectClass.SECRET_KEY)
        try:
            return kek.unwrap_key(
                ObjectClass.SECRET_KEY,
                template.algorithm.key_type,
                blob,
                mechanism=mechanism,
                capabilities=0,
                template=attrs,
            )
        except p11.PKCS11Error:
            raise _bad_blob() from None

    def kcv_of_blob(
        self, wrapper: bytes, blob: bytes, mechanism: Mechanism, template: KeyTemplate
    ) -> str:
        """The KCV of the key inside a wrapped blob, from a session twin destroyed right after."""

        def run() -> str:
            probe = self._unwrap(wrapper, blob, mechanism, template, templates.kcv_probe(template))
            try:
                return (
                    bytes(probe.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)[:3]).hex().upper()
                )
            finally:
                probe.destroy()

        return self._run(run)

    def create_from_value(self, value: bytes, template: KeyTemplate) -> str:
        """A key entered from components: created on the token, its KCV computed there."""

        def run() -> str:
            session = self._require_session()
            probe = session.create_object({**templates.kcv_probe(template), Attribute.VALUE: value})
            try:
                kcv = bytes(probe.encrypt(bytes(16), mechanism=Mechanism.AES_ECB)[:3]).hex().upper()
            finally:
                probe.destroy()
            key = session.create_object(templates.with_value(template, value))
            self._handles[(template.cka_id, ObjectClass.SECRET_KEY)] = key
            return kcv

        return self._run(run)

    # -- audit anchors: the checkpoint signing key and the head mirrored on the token --------

    def ensure_audit_key(self) -> str:
        """Create the audit signing key pair on first use; returns its public key as PEM."""

        def run() -> str:
            if self._find(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY) is None:
                self._generate(
                    templates.build(
                        "EC-P256", "sign", cka_id=AUDIT_KEY_ID, label="kmtui audit signing key"
                    )
                )
            public = self._get_key(AUDIT_KEY_ID, ObjectClass.PUBLIC_KEY)
            attrs = self._read_attributes(public, _PUBLIC_VALUE_ATTRS[KeyType.EC])
            pem: bytes = _public_key(KeyType.EC, attrs).public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return pem.decode("ascii")

        return self._run(run)

    def sign_audit(self, message: bytes) -> bytes:
        """ECDSA P-256 over SHA-256(message), DER; hashed here (SoftHSM lacks ECDSA_SHA256)."""

        def run() -> bytes:
            private = self._get_key(AUDIT_KEY_ID, ObjectClass.PRIVATE_KEY)
            raw = bytes(private.sign(hashlib.sha256(message).digest(), mechanism=Mechanism.ECDSA))
            half = len(raw) // 2
            return encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )

        return self._run(run)

    def read_head(self, registry: str) -> bytes | None:
        """The newest audit head kept on the token (several exist only after a crash mid-update)."""

        def run() -> bytes | None:
            values = [bytes(obj[Attribute.VALUE]) for obj in self._head_objects(registry)]
            return max(values, key=_head_seq) if values else None

        return self._run(run)

    def write_head(self, registry: str, value: bytes) -> None:
        """Create the new head object first, then destroy the older ones (a crash loses nothing).

        The object written last is remembered, so a session searches the token only once.
        """

        def run() -> None:
            key = ("head", registry)
            cached = self._heads.get(key)
            older = [cached] if cached is not None else list(self._head_objects(registry))
            self._heads[key] = self._require_session().create_object(
                {
                    Attribute.CLASS: ObjectClass.DATA,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.MODIFIABLE: False,
                    Attribute.LABEL: f"{HEAD_LABEL}:{registry}",
                    Attribute.APPLICATION: "kmtui",
                    Attribute.VALUE: value,
                }
            )
            for obj in older:
                with suppress(*_GONE):  # another process already replaced it
                    obj.destroy()

        self._run(run)

    def _head_objects(self, registry: str) -> Iterator[Any]:
        yield from self._require_session().get_objects(
            {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: f"{HEAD_LABEL}:{registry}"}
        )


def create_objects(session: Any, template: KeyTemplate) -> dict[ObjectClass, Any]:
    """The token objects a template describes, made in `session` exactly as it says (every
    capability from the template, none from the library's defaults). Callers prove them.

    The only place a key is made on a token: Hsm.generate and create_public use it, and so does
    the security officer's child process (kmtui.core.token.officer), whose session is the SO's.
    """
    spec = template.algorithm
    if template.public and not template.private:  # a public key given by value (a recipient)
        return {ObjectClass.PUBLIC_KEY: session.create_object(template.public)}
    if spec.symmetric:
        key = session.generate_key(
            spec.key_type,
            spec.bits,
            capabilities=0,
            mechanism=template.mechanism,
            template=template.secret,
        )
        return {ObjectClass.SECRET_KEY: key}
    public, private = session.generate_keypair(
        spec.key_type,
        spec.bits if spec.key_type == KeyType.RSA else None,
        capabilities=0,
        mechanism=template.mechanism,
        public_template=template.public,
        private_template=template.private,
    )
    return {ObjectClass.PUBLIC_KEY: public, ObjectClass.PRIVATE_KEY: private}


_USAGE_ATTRS = (
    Attribute.ENCRYPT,
    Attribute.DECRYPT,
    Attribute.WRAP,
    Attribute.UNWRAP,
    Attribute.SIGN,
    Attribute.VERIFY,
    Attribute.DERIVE,
)


def _enum_name(enum: Any, raw: Any) -> str:
    if raw is None:
        return ""
    try:
        return str(enum(raw).name)
    except ValueError:
        return hex(int(raw))


def _raw_attributes(obj: Any, attrs: list[Attribute]) -> dict[Attribute, Any]:
    """Read attributes in one call, or one by one when that fails, tolerating any that are
    absent or undecodable (a label that is not UTF-8 fails the single call)."""
    try:
        values = {Attribute(a): v for a, v in obj.get_attributes(attrs).items()}
    except (p11.PKCS11Error, UnicodeDecodeError, KeyError, ValueError, NotImplementedError):
        values = None
    if values is not None:
        label = values.get(Attribute.LABEL)
        if isinstance(label, str):
            values[Attribute.LABEL] = label.encode("utf-8", "surrogateescape")
        return values
    out: dict[Attribute, Any] = {}
    for attr in attrs:
        try:
            value = obj[attr]
        except (p11.PKCS11Error, UnicodeDecodeError, KeyError, ValueError, NotImplementedError):
            continue
        if attr == Attribute.LABEL and isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        out[attr] = value
    return out


_PUBLIC_VALUE_ATTRS: dict[KeyType, list[Attribute]] = {
    KeyType.RSA: [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT],
    KeyType.EC: [Attribute.EC_PARAMS, Attribute.EC_POINT],
}


def _bad_blob() -> errors.KmtuiError:
    return errors.PolicyRefused(
        "The wrapped key could not be unwrapped: the file is damaged or truncated, or it was "
        "wrapped under another key-encryption key.",
        "Check the file and the KEK named in its manifest; nothing was registered.",
    )


def _head_seq(value: bytes) -> int:
    try:
        return int(json.loads(value)["seq"])
    except (ValueError, KeyError, TypeError):
        return -1


def _fingerprint(key_type: KeyType, attrs: dict[Attribute, Any]) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, built from the public key's attributes."""
    der = _public_key(key_type, attrs).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _public_key(key_type: KeyType, attrs: dict[Attribute, Any]) -> Any:
    """A `cryptography` public key from the token object's attributes."""
    if key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(attrs[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(attrs[Attribute.MODULUS], "big"),
        )
        public: Any = numbers.public_key()
    elif key_type == KeyType.EC:
        curve = _CURVES.get(bytes(attrs[Attribute.EC_PARAMS]))
        if curve is None:
            raise errors.HsmError("The token returned an EC key on a curve kmtui does not know.")
        point = bytes(attrs[Attribute.EC_POINT])
        if len(point) == 3 + 2 * ((curve.key_size + 7) // 8):
            point = point[2:]  # DER OCTET STRING around the point (PKCS#11 v2.40 convention)
        public = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    else:
        raise errors.HsmError(f"No public key form for key type {key_type!r}.")
    return public


_CURVES: dict[bytes, ec.EllipticCurve] = {
    encode_named_curve_parameters("secp256r1"): ec.SECP256R1(),
    encode_named_curve_parameters("secp384r1"): ec.SECP384R1(),
}
