"""What a python-pkcs11 failure means to a custodian: each one becomes a kmtui error that says
what happened and what to do next."""

from __future__ import annotations

from pkcs11 import exceptions as p11

from kmtui.core import errors

REMOVED = (
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceError,
)
"""Failures that mean the token (or the session on it) is gone."""
GONE = (p11.ObjectHandleInvalid, p11.KeyHandleInvalid, p11.NoSuchKey)
"""Failures that mean one object is gone (destroyed elsewhere, or a stale handle)."""

CKR_OK = 0
CKR_USER_ALREADY_LOGGED_IN = 0x100
CKR_ERRORS: dict[int, type[p11.PKCS11Error]] = {
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
"""The python-pkcs11 exception for a CK_RV returned by a function called through ctypes."""


def translate(exc: BaseException, token: str) -> errors.KmtuiError | None:
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
    if isinstance(exc, REMOVED):
        return errors.TokenRemoved(
            f"Token {token} is no longer reachable ({type(exc).__name__}).",
            "Check that it is inserted and powered, then log in again.",
        )
    if isinstance(exc, (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.FunctionNotSupported)):
        return errors.MechanismNotSupported(
            f"Token {token} does not support this operation ({type(exc).__name__}).",
            "Choose another algorithm or a token that offers it (Token pane lists its mechanisms).",
        )
    if isinstance(exc, GONE):
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
