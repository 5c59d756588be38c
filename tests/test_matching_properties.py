"""Property tests of the key: stable under what must not matter, different for what must."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from typing import Any
from urllib.parse import quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from tracelab.replay.matching import (
    MatchOptions, canonical_json, http_request_view, js_number, request_key,
)
from tracelab.sdk.redaction import Redactor

REDACTOR = Redactor()
CAP = 65536
# Names that no redaction rule touches, so the values reach the key as they are.
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ_-é😀 ", min_size=1, max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(NAMES, inner, max_size=4), max_leaves=20)
OBJECTS = st.dictionaries(NAMES, JSON, min_size=1, max_size=6)


def _reordered(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _reordered(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_reordered(v, rng) for v in value]
    return value


def _live_key(body: str, query: str = "", options: MatchOptions = MatchOptions()) -> str:
    view = http_request_view("POST", f"https://api.example.com/v1/x{query}",
                             {"Content-Type": "application/json"}, body, None, REDACTOR, CAP)
    return request_key({"kind": "http", "request": view}, options)


@settings(max_examples=150, deadline=None)
@given(OBJECTS, st.randoms(use_true_random=False), st.sampled_from([None, 2, "\t"]))
def test_key_stable_under_member_order_and_whitespace(body: dict[str, Any], rng: random.Random,
                                                      indent: int | str | None) -> None:
    compact = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    spaced = json.dumps(_reordered(body, rng), ensure_ascii=True, indent=indent,
                        separators=(" , ", " : ")) + "\n"
    assert _live_key(compact) == _live_key(spaced)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(NAMES, st.text(max_size=6)), max_size=6),
       st.randoms(use_true_random=False))
def test_key_stable_under_query_order(pairs: list[tuple[str, str]], rng: random.Random) -> None:
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    first = "?" + urlencode(pairs) if pairs else ""
    second = "?" + urlencode(shuffled, quote_via=quote)  # %20 for spaces, not +
    assert _live_key("{}", first) == _live_key("{}", second if shuffled else "")


@settings(max_examples=200, deadline=None)
@given(OBJECTS, OBJECTS)
def test_different_bodies_give_different_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    same_value = canonical_json(a) == canonical_json(b)  # equal as JSON values (1 == 1.0)
    assert (_live_key(json.dumps(a)) == _live_key(json.dumps(b))) == same_value


@settings(max_examples=100, deadline=None)
@given(OBJECTS, NAMES, JSON, JSON)
def test_an_ignored_path_is_the_only_thing_left_out(body: dict[str, Any], name: str,
                                                    old: Any, new: Any) -> None:
    options = MatchOptions(ignore=(f"body:$[{json.dumps(name)}]",))
    assert _live_key(json.dumps({**body, name: old}), options=options) == \
        _live_key(json.dumps({**body, name: new}), options=options)


def test_numbers_are_written_as_javascript_writes_them() -> None:
    """One node process prints String(x) for a few thousand doubles; js_number must agree."""
    rng = random.Random(12)
    values = [0.1, 1e21, 1e-7, 1e-6, 123e-20, 5e-324, 1.7976931348623157e308, 2**53 + 2.0,
              123456789012345680000.0, 0.000001234, 1e20, -2.5e-8, 100.0, 1.5]
    values += [rng.uniform(-1e6, 1e6) for _ in range(1000)]
    values += [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(2000)]
    values += [float.fromhex(f"0x1.{rng.getrandbits(52):013x}p{rng.randint(-1022, 1023)}")
               for _ in range(1000)]
    node = shutil.which("node")
    assert node is not None, "node is part of the dev environment (sdk-ts)"
    script = ("const xs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "process.stdout.write(JSON.stringify(xs.map(x => String(x))));")
    out = subprocess.run([node, "-e", script], input=json.dumps(values).encode(),
                         capture_output=True, check=True, timeout=60).stdout
    expected = json.loads(out)
    assert [js_number(v) for v in values] == expected


SECRETS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=24)


@settings(max_examples=100, deadline=None)
@given(OBJECTS, SECRETS, SECRETS)
def test_the_secret_never_changes_the_key(body: dict[str, Any], first: str, second: str) -> None:
    """Two live calls differing only in their secrets (header, query, JSON field) share a key."""
    def key(secret: str) -> str:
        view = http_request_view(
            "POST", f"https://api.example.com/v1/x?access_token={secret}",
            {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
            json.dumps({**body, "client_secret": secret}), None, REDACTOR, CAP)
        return request_key({"kind": "http", "request": view})

    assert key(first) == key(second)
    assert first not in key(first) or first in json.dumps(body)
