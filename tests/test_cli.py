"""The command line, run as a user runs it (a real subprocess): outputs, statistics, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import solid

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "layercomposer", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture
def small_canvas(tmp_path):
    solid(32, 32, (200, 30, 30, 255)).save(tmp_path / "a.png")
    solid(20, 40, (30, 30, 200, 128)).save(tmp_path / "b.png")
    doc = {"version": 1, "width": 96, "height": 64, "prompt": "a red sprite",
           "layers": [{"name": "a", "image": "a.png", "x": 16, "y": 16},
                      {"name": "b", "image": "b.png", "x": 40, "y": 8, "locked": True}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    return tmp_path / "c.json"


def test_tokens_json_by_hand(small_canvas):
    out = run("tokens", str(small_canvas), "--json")
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    # a: [16, 48)^2 -> centres 24, 40 each way = 4 tokens. b: alpha 128/255 > 0.5, [40, 60) x [8, 48):
    # cols centres 40, 56 -> 2, rows 8, 24, 40 -> 3 = 6 tokens. Grid 4 x 6.
    assert stats["grid"] == [4, 6]
    assert [(layer["name"], layer["locked"], layer["index"], layer["tokens"]) for layer in stats["layers"]] == [
        ("a", False, 1, 4), ("b", True, 0, 6)
    ]
    assert (stats["total"], stats["unpruned_total"], stats["collage_total"]) == (10, 48, 24)


def test_tokens_table(small_canvas):
    out = run("tokens", str(small_canvas))
    assert out.returncode == 0
    assert "grid 4x6 = 24 noisy tokens" in out.stdout
    assert "condition tokens: layered 10, unpruned 48, collage 24" in out.stdout


def test_tokens_count_as_a_model_does(tmp_path):
    solid(32, 32, (200, 30, 30, 255)).save(tmp_path / "a.png")
    doc = {"version": 1, "width": 64, "height": 64,
           "layers": [{"name": "a", "image": "a.png", "x": 20, "y": 20, "locked": True},
                      {"name": "b", "image": "a.png", "x": 0, "y": 0, "locked": True}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))

    def counts(*flags: str) -> list[tuple[str, int]]:
        out = run("tokens", str(tmp_path / "c.json"), "--json", *flags)
        assert out.returncode == 0, out.stderr
        return [(layer["name"], layer["tokens"]) for layer in json.loads(out.stdout)["layers"]]

    # a: [20, 52) holds centres 24 and 40 (2 x 2) and meets cells 1-3 (3 x 3); b: [0, 32), cells 0-1 either way.
    assert counts() == [("a", 4), ("b", 4)]
    assert counts("--prune", "cover") == [("a", 9), ("b", 4)]
    # Merged: the union of their cells, (0..1)^2 and (1..2)^2 -> 7 under centre; (0..1)^2 and (1..3)^2 -> 12.
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"merge_locked_layers": True, "prune_rule": "cover"}))
    assert counts("--model", str(model)) == [("a + b", 12)]
    assert counts("--merge-locked") == [("a + b", 7)]
    out = run("tokens", str(tmp_path / "c.json"), "--model", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "unknown model" in out.stderr


def test_flatten(small_canvas, tmp_path):
    target = tmp_path / "collage.png"
    out = run("flatten", str(small_canvas), "-o", str(target))
    assert out.returncode == 0, out.stderr
    px = np.asarray(Image.open(target))
    assert px.shape == (64, 96, 4)
    assert tuple(px[20, 20]) == (200, 30, 30, 255)  # a alone
    assert tuple(px[10, 50]) == (30, 30, 200, 128)  # b alone, half transparent
    # b over a at (42, 20): R = 30 * 128/255 + 200 * 127/255 = 114.7, B = 200 * 128/255 + 30 * 127/255 = 115.3.
    assert tuple(px[20, 42]) == (115, 30, 115, 255)


def test_generate_writes_a_png_with_its_settings(small_canvas, tmp_path):
    target = tmp_path / "out.png"
    started = time.perf_counter()
    out = run("generate", str(small_canvas), "-o", str(target), "--model", "tiny-random", "--steps", "2",
              "--seed", "5")
    wall = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    image = Image.open(target)
    assert image.size == (96, 64)
    settings = json.loads(image.info["layercomposer"])
    assert settings["seed"] == 5 and settings["steps"] == 2 and settings["prompt"] == "a red sprite"
    assert "wrote" in out.stderr and "10 condition tokens [layered]" in out.stderr
    # benchmarks/startup.py reads the phase times from this line.
    phases = startup_benchmark().parse_generate_report(out.stderr)
    assert set(phases) == {"load", "condition", "sample", "decode"}
    # Durations of phases inside this one process: none below zero, and together (each rounded to 0.1 s) no
    # more than the process took from start to end. Timestamps, milliseconds or a phase counted twice fail here.
    assert min(phases.values()) >= 0 and sum(phases.values()) <= wall + 0.2, (phases, wall)
    assert phases["load"] > 0  # building the tiny model takes more than 50 ms


def test_quick_exit_runs_exit_handlers_flushes_and_keeps_the_code():
    code = ("import atexit, sys; atexit.register(lambda: print('handler ran')); sys.stdout.write('buffered '); "
            "from layercomposer.cli import quick_exit; quick_exit(3)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout == "buffered handler ran\n", (out.stdout, out.stderr)


def startup_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("startup", ROOT / "benchmarks" / "startup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_startup_benchmark_reads_importtime_output():
    text = "\n".join([
        "import time: self [us] | cumulative | imported package",
        "import time:       120 |        120 |     _io",
        "import time:      2000 |    1500000 |   torch._dynamo",
        "import time:       300 |    2250000 | torch",
        "import time:        10 |         10 | torch",  # a later line for the same name does not count
        "something else",
    ])
    bench = startup_benchmark()
    times = bench.parse_importtime(text)
    assert times == {"_io": (0.00012, 0.00012), "torch._dynamo": (0.002, 1.5), "torch": (0.0003, 2.25)}
    assert bench.self_time_by_package(times) == pytest.approx({"torch": 0.0023, "_io": 0.00012})
    with pytest.raises(ValueError, match="no timing line"):
        startup_benchmark().parse_generate_report("wrote out.png")


def test_startup_benchmark_splits_a_round_by_hand():
    walls = {"python": 0.05, "torch": 1.55, "classes": 5.55, "teardown": 6.55, "generate": 10.0}
    phases = {"load": 4.5, "condition": 0.5, "sample": 3.0, "decode": 0.25}
    parts = startup_benchmark().split_round(walls, phases)
    expected = {"python": 0.05, "torch": 1.5, "classes": 4.0, "teardown": 1.0, "weights": 0.5, "condition": 0.5,
                "sample": 3.0, "decode": 0.25, "rest": 0.2}  # 10 - 1.55 - 4.5 - 3.75
    assert parts == pytest.approx(expected)


def test_generate_strength_runs_that_share_of_the_steps(small_canvas, tmp_path):
    target = tmp_path / "out.png"
    out = run("generate", str(small_canvas), "-o", str(target), "--model", "tiny-random", "--steps", "4",
              "--strength", "0.5")
    assert out.returncode == 0, out.stderr
    settings = json.loads(Image.open(target).info["layercomposer"])
    assert settings["strength"] == 0.5 and settings["steps"] == 4
    assert "0/2 [" in out.stderr  # the progress bar counts the two steps run, not the four of the schedule
    assert "strength 0.5: 2 of 4 steps" in out.stderr


BAD = [
    (["tokens", "missing.json"], "missing.json: file not found"),
    (["generate", "{canvas}", "-o", "{out}.txt"], "unknown image extension"),
    (["generate", "{canvas}", "--model", "nope", "-o", "{out}"], "unknown model 'nope'"),
    (["generate", "{canvas}", "--steps", "0", "-o", "{out}"], "--steps: must be an integer in [1, 1000], got 0"),
    (["generate", "{canvas}", "--steps", "1001", "-o", "{out}"], "--steps: must be an integer in [1, 1000]"),
    (["generate", "{canvas}", "--guidance", "nan", "-o", "{out}"], "--guidance: must be a number in [0, 30]"),
    (["generate", "{canvas}", "--seed", "-1", "-o", "{out}"], "--seed: must be an integer in [0, 4294967295]"),
    (["generate", "{canvas}", "--strength", "1.5", "-o", "{out}"], "--strength: must be a number in (0, 1]"),
    (["generate", "{canvas}", "--strength", "nan", "-o", "{out}"], "--strength: must be a number in (0, 1]"),
    (["generate", "{bad}", "-o", "{out}"], "layers[0].scale: must be positive"),
    (["generate", "{canvas}", "-o", "{tmp}/no/such/dir/out.png"], "does not exist"),
    (["flatten", "{notimage}", "-o", "{out}"], "not an image"),
    (["eval", "sprites", "--model", "tiny-random", "--occlusion-only", "--scenes", "2"], "give --collage-model"),
    (["eval", "sprites", "--model", "tiny-random", "--occlusion-subset", "all"], "only with --occlusion-only"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_exit_2_and_no_output(small_canvas, tmp_path, argv, message):
    bad = tmp_path / "bad.json"
    doc = json.loads(small_canvas.read_text())
    doc["layers"][0]["scale"] = 0
    bad.write_text(json.dumps(doc))
    (tmp_path / "fake.png").write_text("not an image")
    notimage = tmp_path / "notimage.json"
    doc["layers"][0].update(scale=1, image="fake.png")
    notimage.write_text(json.dumps(doc))
    out_png = tmp_path / "result.png"
    subs = {"canvas": str(small_canvas), "bad": str(bad), "notimage": str(notimage), "out": str(out_png),
            "tmp": str(tmp_path)}
    result = run(*[a.format(**subs) for a in argv], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("layercomposer: error: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out_png.exists() and not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))


def test_design_tokens_example_is_true():
    readme = (ROOT / "docs" / "DESIGN.md").read_text()
    marker = "`layercomposer tokens examples/four-sprites.json` prints"
    assert marker in readme
    block = readme.split(marker, 1)[1].split("```", 2)[1].strip("\n")
    out = run("tokens", str(ROOT / "examples" / "four-sprites.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip("\n") == block
    # And the hand check: 256 background cells (locked, id 0) + 9 + 10 + 8 + 13 character cells.
    stats = json.loads(run("tokens", str(ROOT / "examples" / "four-sprites.json"), "--json").stdout)
    assert stats["total"] == 296 and stats["unpruned_total"] == 5 * 256 and stats["collage_total"] == 256
    assert [layer["index"] for layer in stats["layers"]] == [0, 0, 1, 0, 2]


def test_scenes_build_defaults_are_the_builders_own():
    """`scenes build`'s flags repeat BuildOptions' defaults in the parser (the CLI does not import the photo code
    to start); they must stay the same numbers."""
    from dataclasses import fields

    from layercomposer.cli import build_parser
    from layercomposer.photo.scene_builder import BuildOptions

    args = vars(build_parser().parse_args(["scenes", "build", "photos", "-o", "out"]))
    shared = [f.name for f in fields(BuildOptions) if f.name in args]
    assert len(shared) >= 6, shared
    assert {name: args[name] for name in shared} == {name: getattr(BuildOptions(), name) for name in shared}
