"""LLM cost from token counts: a small dated price table shipped with the package.

`prices.json` (beside this module) holds USD per million input and output tokens per model,
and the date the prices were read (`as_of`). A model is found by its exact name, else by the
longest table key that its name starts with followed by `-` (dated and suffixed names:
`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). An unknown model has no cost (None), never a
guessed one: a budget on cost then fails saying so instead of passing on a zero.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def price_table() -> dict[str, Any]:
    """The parsed prices.json: `as_of`, `unit`, `models` {name: {input, output}}."""
    text = resources.files("tracelab.analysis").joinpath("prices.json").read_text("utf-8")
    return json.loads(text)


def price(model: str) -> dict[str, float] | None:
    """USD per million tokens {input, output} for `model`, or None when it is not listed."""
    models = price_table()["models"]
    if model in models:
        return models[model]
    keys = [k for k in models if model.startswith(k + "-")]
    return models[max(keys, key=len)] if keys else None


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """What `input_tokens` in and `output_tokens` out cost on `model`, or None if unknown."""
    rates = price(model) if isinstance(model, str) and model else None
    if rates is None:
        return None
    return (input_tokens * rates["input"] + output_tokens * rates["output"]) / 1_000_000
