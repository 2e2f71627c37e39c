"""Generation settings are limited once (layercomposer.settings) and every entry point holds to the same limits."""

from __future__ import annotations

import math

import pytest

from layercomposer.errors import LayerComposerError
from layercomposer.settings import GUIDANCE, LIMITS, SEED, STEPS, STRENGTH, limits_json


@pytest.mark.parametrize(("limit", "good", "bad"), [
    (STEPS, [1, 28, 1000, 7.0], [0, 1001, 2.5, True, "3", None, math.nan, 10**400]),
    (GUIDANCE, [0, 0.0, 3.5, 30], [-0.1, 30.01, math.nan, math.inf, False, "2"]),
    (STRENGTH, [1e-9, 0.6, 1], [0, 0.0, -1, 1.0000001, math.nan, True]),
    (SEED, [0, 2**32 - 1], [-1, 2**32, 0.5, math.inf]),
])
def test_limits_accept_their_range_and_refuse_the_rest_in_one_line(limit, good, bad):
    for value in good:
        assert limit.check(value) == value
        assert isinstance(limit.check(value), int if limit.integer else float)
    for value in bad:
        with pytest.raises(LayerComposerError) as err:
            limit.check(value, f"--{limit.name}")
        message = str(err.value)
        assert message.startswith(f"--{limit.name}: must be ") and "\n" not in message


def test_the_api_reports_the_limits_the_checks_use():
    reported = limits_json()
    assert reported["steps"] == {"min": 1, "max": 1000, "integer": True, "min_exclusive": False}
    assert reported["strength"]["min_exclusive"] is True
    assert set(reported) == set(LIMITS) | {"prompt_chars"}


def test_server_schema_takes_the_same_limits(tmp_path):
    from pydantic import ValidationError

    from layercomposer.server.schemas import SettingsIn

    assert SettingsIn(steps=1000, seed=2**32 - 1, guidance=30, strength=1).steps == 1000
    for bad in ({"steps": 1001}, {"steps": 0}, {"seed": -1}, {"guidance": 30.5}, {"guidance": math.nan},
                {"strength": 0}, {"strength": math.nan}, {"prompt": "x" * 2001}):
        with pytest.raises(ValidationError):
            SettingsIn(**bad)
