"""The cost estimate in the one line that refuses an over-size canvas (issue 31 item 20), checked against
figures worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

from layercomposer.models.cost import MEASURED_SECONDS, MEASURED_TOKENS, estimate_attention

ROOT = Path(__file__).resolve().parent.parent


def test_demo_estimate_matches_a_hand_calculation():
    # The demo transformer: 6 heads. 20000 tokens in float32: 6 * 20000**2 * 4 = 9.6e9 bytes = 8.94 GiB.
    # Time: 0.667 s * (20000 / 4352)**2 = 0.667 * 21.12 = 14.09 s per step; 28 steps = 394 s = 6.6 min.
    estimate = estimate_attention(20000, "demo-base", bytes_per_element=4, cpu=True)
    assert estimate.heads == 6 and estimate.matrix_bytes == 9_600_000_000
    assert abs(estimate.seconds_per_step - 14.09) < 0.01
    line = estimate.describe(28)
    assert "8.9 GiB" in line and "6 heads x 20000^2 tokens x 4 bytes" in line, line
    assert "about 14.1 s per step, 7 min for 28 steps" in line, line
    # The shipped demo folder reads the same shape from its transformer/config.json; bfloat16 halves the matrix.
    assert estimate_attention(20000, "demo", bytes_per_element=2).matrix_bytes == 4_800_000_000


def test_no_time_without_a_measurement():
    # tiny-random: 2 heads, not the demo's shape, so nothing measured scales to it; nor does a GPU.
    tiny = estimate_attention(17, "tiny-random")
    assert tiny.matrix_bytes == 2 * 17**2 * 4 == 2312 and tiny.seconds_per_step is None
    assert "2.3 KiB" in tiny.describe(28) and "no time estimate" in tiny.describe(28)
    assert estimate_attention(20000, "demo-base", cpu=False).seconds_per_step is None
    unknown = estimate_attention(100, "no-such-model")
    assert unknown.matrix_bytes is None and "unknown" in unknown.describe(28)


def test_the_measured_point_is_the_benchmarks_slowest_row():
    doc = json.loads((ROOT / "docs" / "benchmarks" / "scaling-cpu.json").read_text())
    assert doc["model"] == "demo-base" and doc["device"] == "cpu"
    slowest = max(doc["rows"], key=lambda row: row["seconds"])
    assert slowest["noisy"] + slowest["tokens"] == MEASURED_TOKENS
    assert round(slowest["seconds"], 3) == MEASURED_SECONDS
