"""LLM cost from token counts: a dated price table shipped with the package, overridable.

`prices.json` (beside this module) holds USD per million input, cached input and output tokens
per model, and the date the prices were read (`as_of`). A file named by `TRACELAB_PRICES`
(JSON, or YAML for any other suffix; same shape) overrides and extends it: its entries are
tried first, an entry with a shipped name replaces it. The file is re-read when it changes, so
a corrected price fixes every old event at the next query: cost is never stored, it is
computed from the tags (`llm.model`, `llm.input_tokens`, ...) when the store is read. A bad
file is reported once (a `ConfigWarning`) and the shipped table is used.

A model is matched by its entry's `match` regex against the whole name (lower case, anything
up to a last `/` dropped: `openai/gpt-4o` -> `gpt-4o`); an entry without `match` matches its
own name with optional dated or versioned suffixes and vendor prefixes. The first matching
entry wins. An unknown model has no cost (None), never a guessed one: a budget on cost then
fails saying so instead of passing on a zero.

Cost = (input - cached) * input price + cached * cached price + output * output price, per
million tokens; `llm.input_tokens` counts cached tokens too (see the canonical LLM fields).
When the response reported its own cost (an `llm.cost_usd` tag), that cost wins, with source
`provider`; a table cost has source `table:<as_of>`.
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tracelab.config import ConfigWarning

PRICES_ENV = "TRACELAB_PRICES"
PROVIDER_SOURCE = "provider"
COST_TAG = "llm.cost_usd"
# Dated and versioned spellings of one model: gpt-4o-2024-08-06, claude-3-5-haiku-20241022,
# claude-3-5-sonnet@20240620 (Vertex), claude-3-5-sonnet-latest, ...-v1:0 (Bedrock).
_SUFFIX = r"(?:[-@]\d{4}-?\d{2}-?\d{2}|-latest)?(?:-v\d+(?::\d+)?)?"
_PREFIX = r"(?:[a-z0-9-]+\.)*"  # Bedrock: anthropic.claude-..., us.anthropic.claude-...


class PriceFileError(ValueError):
    """A price file TraceLab cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Price:
    """One model's list prices in USD per million tokens, and the table they come from."""

    name: str
    input: float
    cached_input: float
    output: float
    as_of: str
    pattern: re.Pattern[str] = field(repr=False, compare=False)
    providers: frozenset[str] | None = None

    @property
    def source(self) -> str:
        """`table:<as_of>`: which table (by its date) priced a call."""
        return f"table:{self.as_of}"

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """USD for one call: cached input at the cached price, the rest of input at the input
        price, output (reasoning included) at the output price."""
        cached = min(max(cached_input_tokens, 0), max(input_tokens, 0))
        fresh = max(input_tokens, 0) - cached
        return (fresh * self.input + cached * self.cached_input
                + max(output_tokens, 0) * self.output) / 1_000_000

    def matches(self, model: str, provider: str | None) -> bool:
        if self.providers is not None and provider and provider not in self.providers:
            return False
        return self.pattern.fullmatch(model) is not None


def normalise_model(model: str) -> str:
    """The name prices are matched on: lower case, any `vendor/` or `models/` prefix dropped."""
    return model.strip().lower().rsplit("/", 1)[-1]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or value < 0:
        raise PriceFileError(f"{where} must be a non-negative number, not {value!r}")
    return float(value)


def _entries(raw: Any, origin: str) -> tuple[str, list[Price]]:
    """Validate a parsed table (`as_of`, `models` as a mapping or a list) into Prices."""
    if not isinstance(raw, Mapping):
        raise PriceFileError(f"{origin}: the top level must be a mapping with `as_of` and "
                             f"`models`, not {type(raw).__name__}")
    as_of = raw.get("as_of")
    if not isinstance(as_of, str) or not as_of.strip():
        raise PriceFileError(f"{origin}: `as_of` (the date the prices were read, such as "
                             f"'2026-11-01') is missing")
    models = raw.get("models")
    if isinstance(models, Mapping):
        items = [dict(v, name=k) if isinstance(v, Mapping) else v for k, v in models.items()]
    elif isinstance(models, list):
        items = models
    else:
        raise PriceFileError(f"{origin}: `models` must be a mapping of model name to prices "
                             f"or a list of entries with `name`")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise PriceFileError(f"{origin}: models[{i}] must be a mapping with a `name`")
        name = item["name"]
        where = f"{origin}: model {name!r}"
        unknown = set(item) - {"name", "match", "input", "cached_input", "output", "provider"}
        if unknown:
            raise PriceFileError(f"{where}: unknown keys {sorted(unknown)} (known: match, "
                                 f"input, cached_input, output, provider)")
        for key in ("input", "output"):
            if key not in item:
                raise PriceFileError(f"{where}: `{key}` (USD per 1M tokens) is missing")
        price_in = _number(item["input"], f"{where} `input`")
        cached = _number(item.get("cached_input", item["input"]), f"{where} `cached_input`")
        match = item.get("match")
        regex = match if match is not None else (_PREFIX + re.escape(name.lower()) + _SUFFIX)
        try:
            pattern = re.compile(str(regex), re.IGNORECASE)
        except re.error as exc:
            raise PriceFileError(f"{where} `match` {regex!r} is not a regex: {exc}") from None
        provider = item.get("provider")
        providers = None
        if provider is not None:
            names = [provider] if isinstance(provider, str) else provider
            if not isinstance(names, list) or not all(isinstance(p, str) for p in names):
                raise PriceFileError(f"{where} `provider` must be a name or a list of names")
            providers = frozenset(names)
        out.append(Price(name, price_in, cached, _number(item["output"], f"{where} `output`"),
                         as_of.strip(), pattern, providers))
    return as_of.strip(), out


@lru_cache(maxsize=1)
def shipped_table() -> dict[str, Any]:
    """The parsed prices.json as shipped: `as_of`, `unit`, `note`, `models`."""
    text = resources.files("tracelab.analysis").joinpath("prices.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _shipped_prices() -> tuple[str, tuple[Price, ...]]:
    as_of, prices = _entries(shipped_table(), "prices.json")
    return as_of, tuple(prices)


class PriceTable:
    """The prices in effect: a `TRACELAB_PRICES` file's entries first, then the shipped ones.

    Lookups are cached per (model, provider); a new table is made when the file changes.
    """

    def __init__(self, prices: tuple[Price, ...], as_of: str, override: str | None) -> None:
        self.prices = prices
        self.as_of = as_of
        self.override = override
        self._cache: dict[tuple[str, str | None], Price | None] = {}
        # For callers pricing the same inputs again (the query layer: one entry per tags text).
        self.memo: dict[Any, Any] = {}

    def price_for(self, model: str, provider: str | None = None) -> Price | None:
        """The first entry matching `model` (and `provider`, when the entry names one)."""
        key = (model, provider)
        if key not in self._cache:
            name = normalise_model(model) if isinstance(model, str) else ""
            self._cache[key] = next((p for p in self.prices if name and p.matches(name, provider)),
                                    None)
        return self._cache[key]

    def cost_of(self, tags: Mapping[str, Any]) -> tuple[float | None, str | None]:
        """USD and its source for one LLM call's tags; `(None, None)` when unknown."""
        reported = tag_float(tags.get(COST_TAG))
        if reported is not None:
            return reported, PROVIDER_SOURCE
        model = tags.get("llm.model")
        if not isinstance(model, str) or not model:
            return None, None
        input_tokens = tag_int(tags.get("llm.input_tokens"))
        output_tokens = tag_int(tags.get("llm.output_tokens"))
        if input_tokens is None and output_tokens is None:
            return None, None
        price = self.price_for(model, tag_str(tags.get("llm.provider")))
        if price is None:
            return None, None
        return (price.cost(input_tokens or 0, output_tokens or 0,
                           tag_int(tags.get("llm.cached_input_tokens")) or 0), price.source)


def tag_int(value: Any) -> int | None:
    """A tag's integer (tags are strings; `"120"`, `"120.0"`), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            number = tag_float(value)
            return int(number) if number is not None else None
    return None


def tag_float(value: Any) -> float | None:
    """A tag's non-negative finite number, or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def tag_str(value: Any) -> str | None:
    """A non-empty string tag, or None."""
    return value if isinstance(value, str) and value else None


_LOCK = threading.Lock()
_TABLES: dict[tuple[str, int, int] | None, PriceTable] = {}
_REPORTED: set[tuple[str, int, int]] = set()


def _load_file(path: Path) -> tuple[str, list[Price]]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PriceFileError(f"{path}: cannot be read ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PriceFileError(f"{path}: not JSON ({exc})") from None
    else:
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PriceFileError(f"{path}: not YAML ({exc})") from None
    return _entries(raw, str(path))


def current_prices() -> PriceTable:
    """The table in effect now; one `stat` of the `TRACELAB_PRICES` file per call."""
    as_of, shipped = _shipped_prices()
    name = os.environ.get(PRICES_ENV, "").strip()
    key: tuple[str, int, int] | None = None
    if name:
        try:
            st = os.stat(name)
            key = (name, st.st_mtime_ns, st.st_size)
        except OSError:
            key = (name, -1, -1)
    with _LOCK:
        table = _TABLES.get(key)
    if table is not None:
        return table
    table = PriceTable(shipped, as_of, None)
    if key is not None:
        try:
            if key[1] < 0:
                raise PriceFileError(f"{name}: no such file")
            file_as_of, extra = _load_file(Path(name))
        except PriceFileError as exc:
            with _LOCK:
                first = key not in _REPORTED
                _REPORTED.add(key)
            if first:
                warnings.warn(f"{PRICES_ENV}={name!r} is not usable: {exc}; using the shipped "
                              f"price table of {as_of}", ConfigWarning, stacklevel=2)
        else:
            names = {p.name for p in extra}
            table = PriceTable(tuple(extra) + tuple(p for p in shipped if p.name not in names),
                               file_as_of, name)
    with _LOCK:
        if len(_TABLES) > 16:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def price_for(model: str, provider: str | None = None) -> Price | None:
    """The price of `model` from the table in effect, or None when it is not listed."""
    return current_prices().price_for(model, provider)


def cost_of(tags: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """USD and its source (`provider` or `table:<date>`) for an LLM call from its tags;
    `(None, None)` for an unknown model or a call that reported no token counts."""
    return current_prices().cost_of(tags)


def price_table() -> dict[str, Any]:
    """The table in effect as a mapping: `as_of` (the override file's date when one is in
    use), `unit`, `override` (its path or None) and `models` (the Prices, in match order)."""
    table = current_prices()
    return {"as_of": table.as_of, "unit": shipped_table()["unit"], "override": table.override,
            "models": list(table.prices)}


def price(model: str) -> dict[str, float] | None:
    """USD per million tokens {input, cached_input, output} for `model`, or None."""
    found = price_for(model) if isinstance(model, str) and model else None
    if found is None:
        return None
    return {"input": found.input, "cached_input": found.cached_input, "output": found.output}


def cost_usd(model: str, input_tokens: int, output_tokens: int,
             cached_input_tokens: int = 0) -> float | None:
    """What `input_tokens` in and `output_tokens` out cost on `model`, or None if unknown."""
    found = price_for(model) if isinstance(model, str) and model else None
    if found is None:
        return None
    return found.cost(input_tokens, output_tokens, cached_input_tokens)
