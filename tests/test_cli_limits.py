"""The CLI refuses what cannot work before the slow part (issue 31, items 16, 18, 20, 28): one line, exit 2,
and the model (torch, diffusers) never loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layercomposer.cli import REGISTERED_MODELS, check_model_name
from layercomposer.errors import ModelError

PROBE = """
import sys
from layercomposer.cli import main
code = main(sys.argv[1:])
print("LOADED" if "diffusers" in sys.modules else "NOT-LOADED", "TORCH" if "torch" in sys.modules else "NO-TORCH")
sys.exit(code)
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def canvas_file(tmp_path: Path, width: int = 64, height: int = 64) -> Path:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"version": 1, "width": width, "height": height, "layers": []}))
    return path


def test_registered_model_names_match_the_registry():
    from layercomposer.models.registry import REGISTRY

    assert set(REGISTERED_MODELS) == set(REGISTRY)
    for name in [*REGISTRY, "demo", "owner/repo"]:
        check_model_name(name)
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        check_model_name("nope")


@pytest.mark.parametrize("command", ["generate", "refine", "serve"])
def test_unknown_model_is_reported_before_torch_is_imported(tmp_path, command):
    args = {"generate": ["generate", str(canvas_file(tmp_path)), "-o", str(tmp_path / "o.png")],
            "refine": ["refine", str(canvas_file(tmp_path)), "-o", str(tmp_path / "o.png")],
            "serve": ["serve", "--outputs", str(tmp_path / "out")]}[command]
    r = run(*args, "--model", "no-such-model")
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "NO-TORCH" in r.stdout, r.stdout


def test_unwritable_output_folder_is_reported_before_the_model_loads(tmp_path):
    if os.geteuid() == 0:
        target = "/sys/layercomposer-test.png"  # sysfs takes no new files, even from root
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        target = str(folder / "o.png")
    r = run("generate", str(canvas_file(tmp_path)), "-o", target, "--model", "tiny-random")
    assert r.returncode == 2 and "cannot write" in r.stderr, r.stderr
    assert "NOT-LOADED" in r.stdout


def test_oversized_canvas_is_refused_in_one_line_before_the_model_loads(tmp_path):
    big = canvas_file(tmp_path, 4096, 4096)
    r = run("generate", str(big), "-o", str(tmp_path / "o.png"), "--model", "tiny-random")
    assert r.returncode == 2 and "65536 tokens" in r.stderr and "--max-tokens" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "NOT-LOADED" in r.stdout
    r = run("generate", str(canvas_file(tmp_path)), "-o", str(tmp_path / "o.png"), "--model", "tiny-random",
            "--max-tokens", "10")
    assert r.returncode == 2 and "16 tokens" in r.stderr and "--max-tokens 10" in r.stderr, r.stderr


def test_oversized_canvas_line_states_the_estimate(tmp_path):
    # The demo model's shape (6 heads), float32 on the CPU: 6 * 65536**2 * 4 bytes = 96 GiB; 0.667 s at 4352 tokens
    # scaled by (65536 / 4352)**2 = 226.8 gives 151 s per step (3 min), 4232 s for 28 steps (71 min).
    r = run("generate", str(canvas_file(tmp_path, 4096, 4096)), "-o", str(tmp_path / "o.png"), "--model", "demo-base",
            "--device", "cpu")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "estimated 96.0 GiB for one attention matrix held whole (6 heads x 65536^2 tokens x 4 bytes" in r.stderr
    assert "about 3 min per step, 71 min for 28 steps" in r.stderr, r.stderr


def test_refine_refuses_an_oversized_source_before_the_model_loads(tmp_path):
    # The demo backend counts a canvas as the collage mode does: 4096 px = 256 x 256 = 65536 noisy tokens.
    r = run("refine", str(canvas_file(tmp_path, 4096, 4096)), "-o", str(tmp_path / "o.png"))
    assert r.returncode == 2 and "65536 tokens" in r.stderr and "--max-tokens 16384" in r.stderr, r.stderr
    assert "GiB for one attention matrix" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "NOT-LOADED" in r.stdout
    # Another backend gets the collage whole next to as many noisy tokens: a 64x64 image is 16 + 16.
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(tmp_path / "collage.png")
    r = run("refine", str(tmp_path / "collage.png"), "-o", str(tmp_path / "o.png"), "--model", "tiny-random",
            "--backend", "kontext", "--max-tokens", "31")
    assert r.returncode == 2 and "image: 32 tokens (16 noisy for 64x64 px + 16 of the collage)" in r.stderr, r.stderr
    assert "--max-tokens 31" in r.stderr and "NOT-LOADED" in r.stdout
    r = run("refine", str(canvas_file(tmp_path)), "-o", str(tmp_path / "o.png"), "--max-tokens", "0")
    assert r.returncode == 2 and "--max-tokens: must be at least 1" in r.stderr, r.stderr


def test_refine_source_that_is_a_device_is_refused(tmp_path):
    r = run("refine", "/dev/zero", "-o", str(tmp_path / "o.png"), "--model", "tiny-random")
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr


def test_the_cli_package_runs_as_a_module():
    from layercomposer._version import __version__

    r = subprocess.run([sys.executable, "-m", "layercomposer.cli", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"layercomposer {__version__}", (r.stdout, r.stderr)
