"""`k=v,k=v` component options: JSON scalars, plain strings, quoted commas, and one-line errors."""

from __future__ import annotations

import pytest

from iagbench import ConfigurationError
from iagbench.contract.options import parse_options, parse_value


def test_json_scalars_keep_their_types():
    options = parse_options("a=1,b=2.5,c=true,d=false,e=null,f=-3,g=1e3")
    assert options == {"a": 1, "b": 2.5, "c": True, "d": False, "e": None, "f": -3, "g": 1000.0}
    assert type(options["a"]) is int and type(options["b"]) is float and type(options["g"]) is float
    assert options["c"] is True and options["d"] is False


def test_quoted_strings_stay_strings():
    options = parse_options('n="007",t="true",z="null",s="two words"')
    assert options == {"n": "007", "t": "true", "z": "null", "s": "two words"}


def test_plain_strings_are_taken_as_text():
    options = parse_options("model=/models/llama-7b,prompt=short-answer,dtype=bf16,hub=org/name")
    assert options == {"model": "/models/llama-7b", "prompt": "short-answer", "dtype": "bf16", "hub": "org/name"}


def test_json_containers_are_not_scalars_so_stay_text():
    assert parse_value("[1]") == "[1]"
    assert parse_value("{}") == "{}"
    assert parse_options("ks=[5]") == {"ks": "[5]"}


def test_quoted_commas_and_equals_signs_stay_in_the_value():
    options = parse_options('path="a.jsonl,b.jsonl",k=2,expr="x=y"')
    assert options == {"path": "a.jsonl,b.jsonl", "k": 2, "expr": "x=y"}


def test_a_key_may_name_a_part_of_a_composite_imaginer():
    options = parse_options("bm25.k=5,closed-book.x=1,hyperlora.rank=8,k=2")
    assert options == {"bm25.k": 5, "closed-book.x": 1, "hyperlora.rank": 8, "k": 2}


def test_whitespace_and_empty_items_are_ignored():
    assert parse_options(" a = 1 , b=x ,") == {"a": 1, "b": "x"}
    assert parse_options("") == {}
    assert parse_options(None) == {}


@pytest.mark.parametrize(
    "text, needle",
    [
        ("novalue", "'novalue' is not of the form key=value"),
        ("a=1,novalue", "'novalue' is not of the form key=value"),
        ("=3", "is not of the form key=value"),
        ("1a=2", "is not of the form key=value"),
        ("a.1=2", "is not of the form key=value"),
        ("a.b.c=2", "is not of the form key=value"),
        (".a=2", "is not of the form key=value"),
        ("a=1,b=2,a=3", "option 'a' given twice"),
        ('path="a,b', "unbalanced double quote"),
        ('a=1,b="x,y,c=2', "unbalanced double quote"),
    ],
)
def test_errors_name_the_flag_and_the_problem(text, needle):
    with pytest.raises(ConfigurationError) as error:
        parse_options(text, flag="--reader-args")
    message = str(error.value)
    assert needle in message
    assert "--reader-args" in message and text in message
    assert "\n" not in message
