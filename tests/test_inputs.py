"""Hostile and careless inputs to canvas and bundle parsing and file writing (issue 31, items 2, 10-12, 15-17):
every one a one-line `CanvasError`, never another exception, an unbounded read or a hang."""

from __future__ import annotations

import io
import json
import os
import random
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from layercomposer.canvas import (
    Canvas,
    LayerImage,
    canvas_from_dict,
    load_bundle,
    load_canvas,
    save_bundle_bytes,
    write_atomic,
)
from layercomposer.errors import CanvasError

MAX_PROMPT_LENGTH = 2000


def png(w: int = 24, h: int = 24, rgba=(220, 40, 40, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), rgba).save(buf, "PNG")
    return buf.getvalue()


def doc(**over) -> dict:
    d = {"version": 1, "width": 64, "height": 64, "prompt": "p",
         "layers": [{"name": "a", "image": "a.png", "x": 1, "y": 2}]}
    d.update(over)
    return d


def layer(**over) -> dict:
    return {"name": "a", "image": "a.png", "x": 1, "y": 2} | over


def parse(d: dict) -> Canvas:
    return canvas_from_dict(d, lambda ref, where: LayerImage.from_bytes(png(), where), "canvas")


def bundle(d: dict, files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr("canvas.json", json.dumps(d))
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- item 10: numbers and nesting ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["x", "y", "scale", "rotation"])
def test_integers_beyond_float_range_are_a_canvas_error(key):
    with pytest.raises(CanvasError, match=f"layers\\[0\\].{key}: beyond the limit"):
        parse(doc(layers=[layer(**{key: 10**400})]))


def test_deep_nesting_is_a_canvas_error(tmp_path):
    deep: object = 1
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(CanvasError, match="nested deeper"):
        parse(doc(meta={"a": deep}))
    with pytest.raises(CanvasError, match="nested deeper"):
        parse(doc(layers=[layer(meta={"a": deep})]))
    text = '{"version": 1, "width": 64, "height": 64, "meta": {"a": ' + "[" * 5000 + "]" * 5000 + "}}"
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(CanvasError, match="nested too deeply"):
        load_canvas(tmp_path / "c.json")
    with pytest.raises(CanvasError, match="nested too deeply"):
        load_bundle(bundle_text(text), "b.lcz")
    (tmp_path / "d.json").write_text('{"version": 1, "width": ' + "9" * 5000 + "}")
    with pytest.raises(CanvasError, match="not valid JSON"):
        load_canvas(tmp_path / "d.json")


def test_scene_and_batch_files_that_are_not_json_get_one_line(tmp_path):
    """scene.json and a photo batch spec read through the same JSON reader as canvases: deep nesting, a huge
    integer, bad UTF-8 or a missing file is a one-line error of the right kind, never a traceback."""
    from layercomposer.data.scenes import SceneError, load_scene
    from layercomposer.errors import LayerComposerError
    from layercomposer.photo.batch import load_batch_spec

    cases = {"deep": ("[" * 5000 + "]" * 5000, "nested too deeply"), "digits": ("9" * 5000, "not valid JSON"),
             "utf8": (b"\xff\xfe{", "cannot read"), "broken": ('{"subjects": [', "not valid JSON \\(")}
    for name, (text, message) in cases.items():
        (tmp_path / name).mkdir()
        target = tmp_path / name / "scene.json"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(SceneError, match=message) as scene_error:
            load_scene(tmp_path / name)
        with pytest.raises(LayerComposerError, match=message) as batch_error:
            load_batch_spec(target)
        assert "\n" not in str(scene_error.value) and "\n" not in str(batch_error.value)
    with pytest.raises(SceneError, match=r"scene\.json: no such file"):
        load_scene(tmp_path / "nowhere")


def bundle_text(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("canvas.json", text)
    return buf.getvalue()


# -- item 12: lone surrogates; item 15: lengths -------------------------------------------------------------


@pytest.mark.parametrize("where", ["name", "prompt", "meta value", "meta key", "image"])
def test_lone_surrogates_are_refused(where):
    bad = "a\udcff"
    d = {"name": doc(layers=[layer(name=bad)]), "prompt": doc(prompt=bad), "meta value": doc(meta={"k": bad}),
         "meta key": doc(meta={bad: 1}), "image": doc(layers=[layer(image=bad)])}[where]
    with pytest.raises(CanvasError, match="lone surrogate"):
        parse(d)


def test_prompt_and_meta_lengths_are_limited():
    parse(doc(prompt="x" * MAX_PROMPT_LENGTH))
    with pytest.raises(CanvasError, match="prompt: 2001 characters"):
        parse(doc(prompt="x" * (MAX_PROMPT_LENGTH + 1)))
    with pytest.raises(CanvasError, match="meta: larger than"):
        parse(doc(meta={"a": "x" * 70_000}))
    with pytest.raises(CanvasError, match="meta: larger than"):
        parse(doc(layers=[layer(meta={"a": ["x"] * 30_000})]))


# -- item 2: a bundle member inflated once, its size capped, nothing after IEND ----------------------------


def test_data_after_a_png_iend_is_refused():
    with pytest.raises(CanvasError, match="bytes after the PNG's IEND"):
        LayerImage.from_bytes(png() + b"\0" * 1000, "a.png")
    with pytest.raises(CanvasError, match="more than a 24x24 image can need"):
        LayerImage.from_bytes(png() + b"\0" * (5 << 20), "a.png")


def test_bundle_member_padded_with_zeros_is_refused_without_inflating_it():
    padded = png() + b"\0" * (250 << 20)  # 250 MiB of zeros deflate to about 250 KB
    layers = [layer(name=f"l{i}", image="images/a.png") for i in range(8)]
    data = bundle(doc(layers=layers), {"images/a.png": padded})
    assert len(data) < 400_000
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(CanvasError, match="more than a 24x24 image can need"):
        load_bundle(data, "b.lcz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"inflated {peak >> 20} MiB"


def test_a_member_named_by_many_layers_is_inflated_and_decoded_once():
    layers = [layer(name=f"l{i}", image="images/a.png") for i in range(64)]
    canvas = load_bundle(bundle(doc(layers=layers), {"images/a.png": png(200, 200)}), "b.lcz")
    assert len({id(layer.image) for layer in canvas.layers}) == 1


def test_malformed_zips_only_ever_raise_canvas_error():
    """Mutated bundles (fixed seed): each one loads or raises CanvasError, nothing else."""
    good = bundle(doc(layers=[layer(image="images/a.png"), layer(name="b", image="images/b.png")]),
                  {"images/a.png": png(), "images/b.png": png(30, 20)})
    bases = [good, *(bundle(doc(layers=[layer(image="images/a.png")]), {"images/a.png": png()}, method)
                     for method in (zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA))]
    for base in bases:
        load_bundle(base, "b.lcz")
    rng = random.Random(31)
    others = []
    for i in range(1500):
        data = bytearray(bases[i % len(bases)])
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.6:
                data[pos] = rng.randrange(256)
            elif op < 0.8:
                del data[pos:pos + rng.randrange(1, 64)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        try:
            load_bundle(bytes(data), "b.lcz")
        except CanvasError:
            pass
        except Exception as exc:  # pragma: no cover - the failure being tested for
            others.append(f"{type(exc).__name__}: {exc}")
    assert not others, f"{len(others)} of 1500 raised something else, e.g. {others[:3]}"


@pytest.mark.parametrize("damage", ["encrypted flag", "unknown compression", "bad crc"])
def test_specific_zip_damage_is_a_canvas_error(damage):
    data = bytearray(bundle(doc(layers=[layer(image="images/a.png")]), {"images/a.png": png()}))
    cd = data.rfind(b"PK\x01\x02")  # central directory entries
    lh = 0  # the first local header (canvas.json)
    if damage == "encrypted flag":
        data[lh + 6] |= 1
        data[cd + 8] |= 1
        while (cd := data.find(b"PK\x01\x02", cd + 4)) != -1:
            data[cd + 8] |= 1
    elif damage == "unknown compression":
        for start in (lh, data.find(b"PK\x03\x04", 4)):
            data[start + 8] = 99
        pos = 0
        while (pos := data.find(b"PK\x01\x02", pos)) != -1:
            data[pos + 10] = 99
            pos += 4
    else:
        data[lh + 14] ^= 0xFF
        pos = data.find(b"PK\x01\x02")
        data[pos + 16] ^= 0xFF
    with pytest.raises(CanvasError):
        load_bundle(bytes(data), "b.lcz")


# -- item 16: only regular files, bounded reads --------------------------------------------------------------


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "fifo"])
def test_devices_and_fifos_are_refused_without_reading(tmp_path, device):
    if device == "fifo":
        device = str(tmp_path / "fifo")
        os.mkfifo(device)
    (tmp_path / "c.json").write_text(json.dumps(doc(layers=[layer(image=device)])))
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            load_canvas(tmp_path / "c.json")
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert result, "load_canvas hung"
    assert isinstance(result[0], CanvasError) and "not a regular file" in str(result[0])
    with pytest.raises(CanvasError, match="not a regular file"):
        load_canvas(device)


def test_cli_gives_one_line_and_exit_2_for_bad_canvases(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    cases = {
        "huge.json": json.dumps(doc(layers=[layer(x=10**400)])),
        "deep.json": '{"version": 1, "width": 64, "height": 64, "meta": ' + "[" * 5000 + "]" * 5000 + "}",
        "surrogate.json": json.dumps(doc(layers=[layer(name="\udcff")])),
        "zero.json": json.dumps(doc(layers=[layer(image="/dev/zero")])),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "bad.lcz").write_bytes(b"PK\x03\x04" + b"\xff" * 100)
    for name in [*cases, "bad.lcz"]:
        r = subprocess.run([sys.executable, "-m", "layercomposer", "tokens", str(tmp_path / name)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (name, r.stderr)


# -- item 17: modes and symlinks of written files ------------------------------------------------------------


def test_written_files_respect_the_umask_and_keep_modes_and_symlinks(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "new.png", b"x")
        assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o644
        (tmp_path / "kept.png").write_bytes(b"old")
        os.chmod(tmp_path / "kept.png", 0o640)
        write_atomic(tmp_path / "kept.png", b"new")
        assert stat.S_IMODE((tmp_path / "kept.png").stat().st_mode) == 0o640
        (tmp_path / "target.png").write_bytes(b"old")
        (tmp_path / "link.png").symlink_to(tmp_path / "target.png")
        write_atomic(tmp_path / "link.png", b"new")
        assert (tmp_path / "link.png").is_symlink() and (tmp_path / "target.png").read_bytes() == b"new"
    finally:
        os.umask(old)


def test_saved_bundle_round_trips_after_the_checks(tmp_path):
    canvas = parse(doc(meta={"k": [1, 2.5, "x", None, True]}))
    again = load_bundle(save_bundle_bytes(canvas), "b.lcz")
    assert again.meta == canvas.meta and again.layers[0].image == canvas.layers[0].image
    assert Path(canvas.save(tmp_path / "c.lcz")).exists()
