"""``--set key=value``: typed overrides of suite dataclass fields."""

from __future__ import annotations

import pytest

from aabench.errors import UserError
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.params import build_suites, convert, parameter_types, parse_assignments
from aabench.suites.shift import ShiftSuite

ALL = (["accuracy", "shift", "diagonal"], [AccuracySuite, ShiftSuite, DiagonalSuite])


def build(*assignments: str, names=None, classes=None):
    return build_suites(names or ALL[0], classes or ALL[1], list(assignments))


def test_no_assignments_give_the_published_defaults():
    accuracy, shift, diagonal = build()
    assert accuracy == AccuracySuite(resize_size=None, crop_size=None)
    assert shift.parameters() == {
        "max_shift": 32,
        "epochs": 5,
        "per_batch": False,
        "reference_batch": 8,
        "mode": "crop",
        "roll_of": "crop",
        "compare_to": "shifted",
        "preset": "",
    }
    # The parameters added with the later papers' variants, at their defaults, leave
    # the protocol as it was: earlier runs stay comparable with new ones.
    assert shift.protocol() == {
        "max_shift": 32,
        "epochs": 5,
        "per_batch": False,
        "reference_batch": 8,
        "mode": "crop",
    }
    assert diagonal.max_offset == 32


def test_overrides_are_typed_by_the_field():
    accuracy, shift, diagonal = build(
        "epochs=3", "per_batch=true", "mode=circular", "crop_size=200", "max_offset=16"
    )
    assert shift.epochs == 3 and type(shift.epochs) is int
    assert shift.per_batch is True
    assert shift.mode == "circular"
    assert accuracy.crop_size == 200 and type(accuracy.crop_size) is int
    assert accuracy.resize_size is None
    assert diagonal.max_offset == 16


@pytest.mark.parametrize(
    "text, expected",
    [("true", True), ("false", False), ("True", True), ("FALSE", False), ("1", True), ("0", False)],
)
def test_booleans(text, expected):
    (shift,) = build(f"per_batch={text}", names=["shift"], classes=[ShiftSuite])
    assert shift.per_batch is expected


@pytest.mark.parametrize("text", ["none", "None", "null"])
def test_optional_int_accepts_none(text):
    (accuracy,) = build(f"crop_size={text}", names=["accuracy"], classes=[AccuracySuite])
    assert accuracy.crop_size is None


@pytest.mark.parametrize(
    "items, message",
    [
        (["epochs=2", "epochs=3"], "--set epochs is given twice ('2' and '3'): give each key once"),
        (["epochs=2", " epochs = 2 "], "--set epochs is given twice ('2' and '2')"),
        (["crop_size=100", "crop_size=none"], "--set crop_size is given twice ('100' and 'none')"),
    ],
    ids=["different-values", "same-value", "then-none"],
)
def test_a_key_given_twice_is_refused_not_won_by_the_last(items, message):
    with pytest.raises(UserError) as error:
        parse_assignments(items)
    assert message in str(error.value)


def test_optional_int_accepts_an_int():
    assert convert("300", int | None, "resize_size") == 300
    assert convert("7", parameter_types(AccuracySuite)["resize_size"], "k") == 7


def test_a_key_applies_only_to_the_suites_that_have_it():
    accuracy, shift = build(
        "epochs=2", names=["accuracy", "shift"], classes=[AccuracySuite, ShiftSuite]
    )
    assert shift.epochs == 2
    assert accuracy == AccuracySuite()


def test_whitespace_around_key_and_value_is_ignored():
    assert parse_assignments([" epochs = 4 "]) == {"epochs": "4"}


def test_parameter_types_follow_the_dataclass_fields():
    assert parameter_types(ShiftSuite) == {
        "max_shift": int,
        "epochs": int,
        "per_batch": bool,
        "reference_batch": int,
        "mode": str,
        "roll_of": str,
        "compare_to": str,
        "preset": str,
    }
    assert parameter_types(AccuracySuite) == {"resize_size": int | None, "crop_size": int | None}


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(UserError) as error:
        build("epoch=3", names=["shift"], classes=[ShiftSuite])
    message = str(error.value)
    assert "unknown --set key epoch for suite shift" in message
    keys = "compare_to, epochs, max_shift, mode, per_batch, preset, reference_batch, roll_of"
    assert f"valid keys are {keys}" in message


def test_unknown_key_lists_the_keys_of_every_chosen_suite():
    with pytest.raises(UserError, match="valid keys are crop_size, max_offset, resize_size"):
        build("bogus=1", names=["accuracy", "diagonal"], classes=[AccuracySuite, DiagonalSuite])


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("epochs=three", "--set epochs='three': expected int"),
        ("epochs=2.5", "--set epochs='2.5': expected int"),
        ("per_batch=maybe", "--set per_batch='maybe': expected bool"),
        ("crop_size=big", "--set crop_size='big': expected int or NoneType"),
        ("max_shift=none", "--set max_shift='none': expected int"),
    ],
)
def test_wrong_type_is_a_user_error(assignment, message):
    with pytest.raises(UserError) as error:
        build(assignment)
    assert message in str(error.value)


@pytest.mark.parametrize("item", ["epochs", "=3", "  =3"])
def test_not_key_value_is_a_user_error(item):
    with pytest.raises(UserError, match="is not key=value"):
        parse_assignments([item])


def test_values_are_validated_by_the_suite():
    with pytest.raises(UserError, match="shift mode must be one of crop, circular"):
        build("mode=wrap", names=["shift"], classes=[ShiftSuite])
