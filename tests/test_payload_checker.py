"""The compiled payload check (`schemas.payload.PayloadChecker`): the shapes the built-in schemas
do not have, a type that holds itself, unions, maps and fixed, and what each refusal names."""

from __future__ import annotations

import fastavro
import pytest

from flowproof.schemas.errors import PayloadInvalid
from flowproof.schemas.payload import PayloadChecker

TREE = fastavro.parse_schema(
    {
        "type": "record",
        "name": "Node",
        "namespace": "t",
        "fields": [
            {"name": "label", "type": "string"},
            {"name": "weight", "type": ["null", "long", "string"], "default": None},
            {"name": "children", "type": {"type": "array", "items": "Node"}, "default": []},
            {"name": "tags", "type": {"type": "map", "values": "double"}, "default": {}},
            {"name": "digest", "type": ["null", {"type": "fixed", "name": "D", "size": 2}]},
            {"name": "parent", "type": ["null", "Node"], "default": None},
        ],
    }
)
CHECK = PayloadChecker("t.Node", TREE)


def test_a_type_that_holds_itself_is_checked_at_every_depth() -> None:
    leaf = {"label": "c", "children": [], "digest": None}
    tree = {"label": "a", "children": [{"label": "b", "children": [leaf], "digest": "xy"}]}
    tree["digest"] = None
    converted = CHECK(tree)
    assert converted["children"][0]["children"][0] == leaf
    assert converted["children"][0]["digest"] == b"xy"  # fixed: code points 0-255 as bytes
    with pytest.raises(PayloadInvalid) as info:
        CHECK({**tree, "children": [{**leaf, "children": [{**leaf, "label": 5}]}]})
    assert info.value.field == "children[0].children[0].label"
    assert "must be a string, not int" in str(info.value)


@pytest.mark.parametrize(
    ("weight", "converted"),
    [(None, None), (7, 7), ("heavy", "heavy")],
)
def test_a_union_takes_the_first_branch_that_fits(weight: object, converted: object) -> None:
    assert CHECK({"label": "a", "weight": weight, "digest": None})["weight"] == converted


def test_a_union_refusal_lists_every_branch_in_the_schemas_order() -> None:
    with pytest.raises(PayloadInvalid) as info:
        CHECK({"label": "a", "weight": 1.5, "digest": None})
    assert info.value.field == "weight"
    assert info.value.problem == (
        "fits none of the union's types (must be null, not float; "
        "must be an integer (long), not float; must be a string, not float)"
    )


def test_a_nested_field_inside_a_union_branch_is_named_not_the_union() -> None:
    with pytest.raises(PayloadInvalid) as info:
        CHECK({"label": "a", "digest": None, "parent": {"label": "p", "digest": None, "x": 1}})
    assert info.value.field == "parent.x"
    assert info.value.problem == "is not a field of t.Node"
    with pytest.raises(PayloadInvalid) as info:
        CHECK({"label": "a", "digest": "xyz"})
    assert info.value.field == "digest"
    assert "fits none" in info.value.problem and "must be 2 bytes, not 3" in info.value.problem


def test_map_values_and_keys_are_named() -> None:
    assert CHECK({"label": "a", "tags": {"x": 1}, "digest": None})["tags"] == {"x": 1.0}
    with pytest.raises(PayloadInvalid) as info:
        CHECK({"label": "a", "tags": {"x": 1.0, "y": True}, "digest": None})
    assert info.value.field == "tags.y"
    with pytest.raises(PayloadInvalid) as info:
        CHECK({"label": "a", "tags": {"k\x00": 1.0}, "digest": None})
    assert info.value.field == "tags.k\x00"
    assert "NUL" in info.value.problem


@pytest.mark.parametrize(
    ("payload", "field", "problem"),
    [
        ([], "<payload>", "must be a JSON object, not list"),
        ({"digest": None}, "label", "is required and missing"),
        ({"label": "a", "digest": None, "extra": 1}, "extra", "is not a field of t.Node"),
        ({"label": "\ud800", "digest": None}, "label", "lone surrogate"),
        ({"label": "é\x00", "digest": None}, "label", "NUL"),
    ],
)
def test_refusals_name_the_field(payload: object, field: str, problem: str) -> None:
    with pytest.raises(PayloadInvalid) as info:
        CHECK(payload)
    assert info.value.field == field
    assert problem in info.value.problem
