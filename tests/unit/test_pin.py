"""The token PIN as two custodians' halves: pure rules, no token."""

from __future__ import annotations

import pytest

from kmtui.core import errors
from kmtui.core.control.pin import (
    MIN_HALF_LENGTH,
    Half,
    PinHalves,
    ProtectedPath,
    audit_params,
    check_minimum,
    parse_lines,
)

A, B = "first-half-1", "second-half-2"


def test_the_pin_is_the_first_half_then_the_second_whoever_holds_them() -> None:
    assert PinHalves(Half("alice", A), Half("bob", B)).pin() == A + B
    assert PinHalves(Half("bob", A), Half("alice", B)).pin() == A + B
    assert PinHalves.of([("alice", A), ("bob", B)]).holders == ("alice", "bob")


def test_neither_half_alone_nor_the_halves_swapped_make_the_pin() -> None:
    pin = PinHalves.of([("alice", A), ("bob", B)]).pin()
    assert pin not in (A, B, B + A)


@pytest.mark.parametrize("second", ["alice", "ALICE", "Alice"])
def test_the_same_person_twice_is_refused_whatever_the_case(second: str) -> None:
    with pytest.raises(errors.UsageError, match="two different custodians"):
        PinHalves.of([("alice", A), (second, B)])


def test_an_empty_half_is_refused_and_named_by_position_and_holder() -> None:
    with pytest.raises(errors.UsageError, match=r"The second half \(bob\) is empty"):
        PinHalves.of([("alice", A), ("bob", "")])


def test_a_half_under_the_minimum_is_refused_without_showing_it() -> None:
    with pytest.raises(errors.UsageError) as info:
        PinHalves.of([("alice", "short12"), ("bob", B)])
    assert "7 characters" in str(info.value) and "at least 8" in str(info.value)
    assert "short12" not in str(info.value)


def test_a_configured_minimum_is_applied_and_never_below_eight() -> None:
    with pytest.raises(errors.UsageError, match="at least 12"):
        PinHalves.of([("alice", "abcdefghij"), ("bob", B)], minimum=12)
    PinHalves.of([("alice", "abcdefghijkl"), ("bob", "mnopqrstuvwx")], minimum=12)
    for too_low in (0, 4, 7, True, "8"):
        with pytest.raises(errors.ConfigError):
            check_minimum(too_low)  # type: ignore[arg-type]
    assert check_minimum(MIN_HALF_LENGTH) == 8


@pytest.mark.parametrize(
    "half", ["with space1", "tab\there12", "caf\u00e9caf\u00e9", "bell\x07\x07\x07\x07"]
)
def test_a_half_with_spaces_controls_or_non_ascii_is_refused(half: str) -> None:
    with pytest.raises(errors.UsageError, match="space, a control character"):
        PinHalves.of([("alice", half), ("bob", B)])


@pytest.mark.parametrize("name", ["", "-alice", "12345", "a b", "x" * 33, "\x1b[2J"])
def test_a_holder_must_be_a_valid_operator_name_and_is_not_echoed(name: str) -> None:
    with pytest.raises(errors.UsageError, match="not a valid operator name") as info:
        PinHalves.of([(name, A), ("bob", B)])
    assert "\x1b" not in str(info.value)


def test_equal_halves_cannot_become_a_new_pin() -> None:
    halves = PinHalves.of([("alice", A), ("bob", A)])  # a log-in just tries them on the token
    with pytest.raises(errors.UsageError, match="the same"):
        halves.for_new_pin()


def test_only_two_halves_make_a_pin() -> None:
    for pairs in ([], [("alice", A)], [("alice", A), ("bob", B), ("carol", "third-half-3")]):
        with pytest.raises(errors.UsageError, match="two custodians give one half each"):
            PinHalves.of(pairs)


def test_no_repr_shows_a_half() -> None:
    halves = PinHalves.of([("alice", A), ("bob", B)])
    shown = repr(halves) + repr(Half("alice", A)) + str(halves) + f"{halves!r}"
    assert A not in shown and B not in shown
    assert "alice" in shown and "bob" in shown


def test_the_trail_gets_the_holders_names_only() -> None:
    halves = PinHalves.of([("alice", A), ("bob", B)])
    assert audit_params(halves) == {"login": "split", "custodians": ["alice", "bob"]}
    assert audit_params(halves, "so_") == {"so_login": "split", "so_custodians": ["alice", "bob"]}
    assert audit_params(ProtectedPath()) == {"login": "protected-path"}


def test_halves_lines_are_name_then_half_and_a_bad_line_is_not_echoed() -> None:
    text = f"# the first half first\nalice {A}\n\n  bob   {B}  \n"
    assert parse_lines(text) == [("alice", A), ("bob", B)]
    with pytest.raises(errors.UsageError, match="line 2 is not") as info:
        parse_lines(f"alice {A}\nbob {B} extra\n")
    assert B not in str(info.value)
