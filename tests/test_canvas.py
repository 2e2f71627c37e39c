"""The canvas contract (docs/DESIGN.md section 2): file format, rendering, flattening and every bad input."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import alpha, layer, solid
from layercomposer.canvas import Canvas, LayerImage, load_bundle, load_canvas, save_bundle_bytes
from layercomposer.errors import CanvasError

# ----------------------------------------------------------------------------------------------------------
# Round trips


def _write_png(path, image: Image.Image) -> None:
    image.save(path, format="PNG")


@pytest.fixture
def canvas_dir(tmp_path):
    """A JSON canvas with a JPEG background, two PNG subjects (one semi-transparent) and all fields set."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "beach.jpg", quality=90)
    ana = rng.integers(0, 255, (40, 30, 4), dtype=np.uint8)
    Image.fromarray(ana, "RGBA").save(tmp_path / "ana.png")
    _write_png(tmp_path / "bo.png", solid(20, 20, (0, 0, 255, 128)))
    doc = {
        "version": 1, "width": 200, "height": 120, "prompt": "two friends on a beach",
        "layers": [
            {"name": "beach", "image": "beach.jpg", "kind": "background", "locked": True},
            {"name": "ana", "image": "ana.png", "x": 96, "y": 24.5, "scale": 0.5, "rotation": 12.5,
             "locked": False, "visible": True, "meta": {"note": "kept"}},
            {"name": "bo", "image": "bo.png", "x": -5, "y": 7, "visible": False},
        ],
        "meta": {"author": "test"},
    }
    (tmp_path / "canvas.json").write_text(json.dumps(doc))
    return tmp_path


def test_json_load_applies_defaults_and_keeps_fields(canvas_dir):
    c = load_canvas(canvas_dir / "canvas.json")
    assert (c.width, c.height, c.prompt) == (200, 120, "two friends on a beach")
    assert [layer.name for layer in c.layers] == ["beach", "ana", "bo"]
    bg, ana, bo = c.layers
    assert bg.kind == "background" and bg.locked and bg.visible
    assert (ana.x, ana.y, ana.scale, ana.rotation, ana.locked) == (96, 24.5, 0.5, 12.5, False)
    assert ana.meta == {"note": "kept"}
    # Defaults of section 2: scale 1, rotation 0, locked false, kind subject.
    assert (bo.scale, bo.rotation, bo.locked, bo.visible, bo.kind) == (1, 0, False, False, "subject")
    assert c.meta == {"author": "test"}


def test_json_and_bundle_round_trip_losslessly(canvas_dir, tmp_path_factory):
    c = load_canvas(canvas_dir / "canvas.json")
    out = tmp_path_factory.mktemp("saved")
    c.save(out / "copy.json")
    c.save(out / "copy.lcz")
    again_json = load_canvas(out / "copy.json")
    again_lcz = load_canvas(out / "copy.lcz")
    for other in (again_json, again_lcz):
        assert other == c  # every field, and images compared by decoded pixels
        for a, b in zip(c.layers, other.layers, strict=True):
            assert a.image.data == b.image.data  # byte for byte: the JPEG is not re-encoded
            assert a.image.ext == b.image.ext
    # The bundle holds canvas.json at its root and the images under images/.
    names = zipfile.ZipFile(out / "copy.lcz").namelist()
    assert names[0] == "canvas.json" and all(n.startswith("images/") for n in names[1:])
    assert sorted(names[1:]) == ["images/ana.png", "images/beach.jpg", "images/bo.png"]
    # A second save of the loaded bundle is identical (stable output).
    assert save_bundle_bytes(again_lcz) == save_bundle_bytes(c)


def test_saving_json_next_to_different_file_of_same_name_does_not_overwrite(tmp_path):
    (tmp_path / "images").mkdir()
    _write_png(tmp_path / "images" / "a.png", solid(8, 8))  # a different (red) picture already there
    c = Canvas(64, 64, [layer("a", solid(8, 8, (0, 255, 0, 255)))])
    c.save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["layers"][0]["image"] == "images/a-1.png"
    assert np.asarray(Image.open(tmp_path / "images" / "a.png"))[0, 0, 1] == 0  # the user's file is untouched
    assert load_canvas(tmp_path / "c.json") == c


def test_identical_images_are_stored_once_in_a_bundle():
    img = solid(8, 8)
    c = Canvas(64, 64, [layer("a", img), layer("b", img, x=10)])
    data = save_bundle_bytes(c)
    assert len(zipfile.ZipFile(io.BytesIO(data)).namelist()) == 2
    assert load_bundle(data) == c


# ----------------------------------------------------------------------------------------------------------
# Rendering: where a transformed layer lands, by hand


def _marked(w: int, h: int) -> Image.Image:
    """Opaque red w x h with a green 1-pixel marker at the top-left."""
    im = solid(w, h)
    im.putpixel((0, 0), (0, 255, 0, 255))
    return im


def test_unscaled_integer_placement_copies_pixels_exactly():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    c = Canvas(64, 64, [layer("a", Image.fromarray(src, "RGBA"), x=5, y=7)])
    out = np.asarray(c.render_layer(c.layers[0]))
    assert np.array_equal(out[7:17, 5:17], src)
    assert out[:7].max() == 0 and out[17:].max() == 0 and out[:, :5].max() == 0 and out[:, 17:].max() == 0


def test_scaled_rotated_layer_lands_where_computed_by_hand():
    # 20x10 at (30, 40), scale 2 -> a 40x20 box [30,70)x[40,60) centred on (50, 50).
    # Rotated 90 degrees counter-clockwise about that centre -> a 20x40 box [40,60)x[30,70),
    # and the image's top-left corner goes to the bottom-left of the box.
    c = Canvas(128, 128, [layer("a", _marked(20, 10), x=30, y=40, scale=2, rotation=90)])
    out = np.asarray(c.render_layer(c.layers[0]))
    a = out[..., 3]
    assert (a[30:70, 40:60] > 128).mean() > 0.97
    assert a[30:70, 41:59].min() == 255  # interior fully opaque
    assert a[:, :39].max() == 0 and a[:, 61:].max() == 0 and a[:29].max() == 0 and a[71:].max() == 0
    assert a[50, 39] < 128 < a[50, 40] and a[50, 59] > 128 > a[50, 60]
    # Marker (2x2 canvas pixels after scaling) at the bottom-left corner: x 40..41, y 68..69.
    r, g = out[68:70, 40:42, 0].astype(int), out[68:70, 40:42, 1].astype(int)
    assert (g > r).all()
    assert out[31, 41, 0] > out[31, 41, 1]  # top-left of the box is plain red


def test_rotation_is_counter_clockwise_on_screen():
    # A horizontal bar rotated +30 degrees: its right end goes up (smaller y).
    c = Canvas(128, 128, [layer("bar", solid(60, 4), x=34, y=62, rotation=30)])
    a = alpha(c.render_layer(c.layers[0]))
    ys, xs = np.nonzero(a > 128)
    right, left = ys[xs > 80].mean(), ys[xs < 48].mean()
    assert right < 64 - 10 and left > 64 + 10


def test_downscaled_layer_box():
    c = Canvas(64, 64, [layer("a", solid(40, 20), x=8, y=8, scale=0.5)])
    a = alpha(c.render_layer(c.layers[0]))
    assert a[8:18, 8:28].min() == 255
    assert a.sum() == 255 * 20 * 10


def test_background_covers_the_canvas_with_a_centre_crop():
    # 100x50, left half red, right half blue, on 128x128: scale max(1.28, 2.56) = 2.56 -> 256x128 at x = -64.
    src = solid(100, 50, (255, 0, 0, 255))
    src.paste(solid(50, 50, (0, 0, 255, 255)), (50, 0))
    c = Canvas(128, 128, [layer("bg", src, kind="background", x=999, scale=7)])  # placement ignored
    out = np.asarray(c.render_layer(c.layers[0]))
    assert out[..., 3].min() == 255
    assert tuple(out[64, 10, :3]) == (255, 0, 0) and tuple(out[64, 120, :3]) == (0, 0, 255)
    assert out[64, 60, 0] > out[64, 60, 2] and out[64, 68, 2] > out[64, 68, 0]  # the seam is at x = 64


def test_render_crops_to_generation_size():
    c = Canvas(100, 70, [layer("a", solid(10, 10), x=90, y=60)])
    assert c.generation_size == (96, 64) and c.grid == (4, 6)
    out = alpha(c.render_layer(c.layers[0], c.generation_size))
    assert out.shape == (64, 96)
    assert out[60:64, 90:96].min() == 255 and out.sum() == 255 * 4 * 6


# ----------------------------------------------------------------------------------------------------------
# Flatten


def test_flatten_z_order_hidden_layers_and_alpha_over():
    red, green, blue = solid(20, 20, (255, 0, 0, 255)), solid(20, 20, (0, 255, 0, 255)), solid(20, 20, (0, 0, 255, 255))
    half = solid(20, 20, (0, 0, 255, 128))
    c = Canvas(64, 64, [
        layer("red", red, x=0, y=0),
        layer("green", green, x=10, y=10),  # in front of red where they overlap
        layer("blue", blue, x=5, y=5, visible=False),  # hidden: not drawn at all
        layer("half", half, x=40, y=40),
        layer("late", red, x=30, y=30),  # later in the list, so in front of "half" where they overlap
    ])
    out = np.asarray(c.flatten())
    assert tuple(out[5, 5]) == (255, 0, 0, 255)  # red alone (blue hidden)
    assert tuple(out[15, 15]) == (0, 255, 0, 255)  # green over red
    assert tuple(out[35, 35]) == (255, 0, 0, 255)  # "late" alone
    assert tuple(out[45, 45]) == (255, 0, 0, 255)  # "late" in front of "half"
    assert tuple(out[55, 55]) == (0, 0, 255, 128)  # half-transparent blue over nothing stays straight alpha
    assert tuple(out[0, 63]) == (0, 0, 0, 0)
    # Semi-transparent over opaque: 128/255 blue over red = (255*127/255, 0, 255*128/255) = (127, 0, 128).
    c2 = Canvas(64, 64, [layer("red", red), layer("half", half)])
    assert tuple(np.asarray(c2.flatten())[10, 10]) == (127, 0, 128, 255)


# ----------------------------------------------------------------------------------------------------------
# Bad input: one clear line naming the file and the field


def _canvas_file(tmp_path, doc, images=("a.png",)):
    for name in images:
        _write_png(tmp_path / name, solid(8, 8))
    path = tmp_path / "c.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc(**over):
    doc = {"version": 1, "width": 128, "height": 128, "layers": [{"name": "a", "image": "a.png"}]}
    doc.update(over)
    return doc


BAD_DOCS = [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "top level must be a JSON object"),
    (_doc(version=2), "version: unsupported canvas version 2"),
    ({k: v for k, v in _doc().items() if k != "version"}, "version: missing"),
    (_doc(width=32), "width: 32 is outside 64..4096"),
    (_doc(height=5000), "height: 5000 is outside 64..4096"),
    (_doc(width=128.5), "width: must be an integer"),
    (_doc(layers=[{"name": f"l{i}", "image": "a.png"} for i in range(65)]), "65 layers, above the limit of 64"),
    (_doc(layers=[{"name": "a", "image": "a.png", "scale": 0}]), "layers[0].scale: must be positive"),
    (_doc(layers=[{"name": "a", "image": "a.png", "scale": -1}]), "layers[0].scale: must be positive"),
    ('{"version": 1, "width": 128, "height": 128, "layers": [{"name": "a", "image": "a.png", "scale": NaN}]}',
     "layers[0].scale: must be finite"),
    ('{"version": 1, "width": 128, "height": 128, "layers": [{"name": "a", "image": "a.png", "x": Infinity}]}',
     "layers[0].x: must be finite"),
    (_doc(layers=[{"name": "a", "image": "a.png", "scale": "2"}]), "layers[0].scale: must be a number"),
    (_doc(layers=[{"name": "a", "image": "a.png"}, {"name": "a", "image": "a.png"}]), "duplicate layer name 'a'"),
    (_doc(layers=[{"name": "a", "image": "a.png"}, {"name": "b", "image": "a.png", "kind": "background"}]),
     "layers[1].kind: a background layer must be the first layer"),
    (_doc(layers=[{"name": "a", "image": "a.png", "kind": "sticker"}]), "layers[0].kind: must be one of"),
    (_doc(layers=[{"name": "a", "image": "a.png", "locked": "yes"}]), "layers[0].locked: must be true or false"),
    (_doc(layers=[{"name": "a", "image": "a.png", "lockd": True}]), "layers[0]: unknown field 'lockd'"),
    (_doc(layers=[{"name": "a"}]), "layers[0]: image: missing"),
    (_doc(layers=[{"name": "a", "image": "missing.png"}]), "layers[0].image 'missing.png': file not found"),
    (_doc(layers=[{"name": "", "image": "a.png"}]), "layers[0].name: must be a non-empty string"),
    (_doc(prompt=3), "prompt: must be a string"),
    (_doc(layers="a.png"), "layers: must be a list"),
]


@pytest.mark.parametrize(("doc", "message"), BAD_DOCS, ids=[m for _, m in BAD_DOCS])
def test_bad_canvas_gives_one_line_error_naming_file_and_field(tmp_path, doc, message):
    path = _canvas_file(tmp_path, doc)
    with pytest.raises(CanvasError) as info:
        load_canvas(path)
    text = str(info.value)
    assert message in text
    assert text.startswith(str(path)) and "\n" not in text


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of width x height zeros: tiny on disk, huge decoded."""
    row = b"\x00" * (width + 1)  # filter byte + pixels
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    data = bomb_png(8000, 6000)  # 48 MP in about 50 kB
    assert len(data) < 200_000
    assert Image.open(io.BytesIO(data)).size == (8000, 6000)
    (tmp_path / "a.png").write_bytes(data)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_doc()))
    with pytest.raises(CanvasError, match=r"8000x6000 \(48.0 MP\), above the 40 MP limit \(refused before decoding\)"):
        load_canvas(path)


def test_non_image_layer_file(tmp_path):
    (tmp_path / "a.png").write_text("this is not a png\n")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_doc()))
    with pytest.raises(CanvasError, match=r"layers\[0\].image 'a.png': not an image"):
        load_canvas(path)


def test_truncated_image(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_doc()))
    with pytest.raises(CanvasError, match="cannot decode image"):
        load_canvas(path)


def test_non_canvas_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CanvasError, match="not a canvas"):
        load_canvas(tmp_path / "x.bin")
    with pytest.raises(CanvasError, match="file not found"):
        load_canvas(tmp_path / "nope.json")
    with pytest.raises(CanvasError, match="is a directory"):
        load_canvas(tmp_path)
    (tmp_path / "x.lcz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(CanvasError, match=r"not a valid .lcz bundle"):
        load_canvas(tmp_path / "x.lcz")


def _bundle(doc, files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("canvas.json", json.dumps(doc))
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_bundle_refuses_paths_that_leave_it():
    png = io.BytesIO()
    solid(8, 8).save(png, "PNG")
    for ref in ("../a.png", "images/../../a.png", "/etc/passwd", "C:\\a.png"):
        data = _bundle(_doc(layers=[{"name": "a", "image": ref}]), {"a.png": png.getvalue()})
        with pytest.raises(CanvasError, match=r"(leaves the bundle|relative path inside the bundle)"):
            load_bundle(data, "b.lcz")
    data = _bundle(_doc(layers=[{"name": "a", "image": "images/./a.png"}]), {"images/a.png": png.getvalue()})
    assert load_bundle(data).layers[0].image.size == (8, 8)
    with pytest.raises(CanvasError, match=r"canvas.json missing"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("other.json", "{}")
        load_bundle(buf.getvalue(), "b.lcz")


def test_in_memory_canvas_validation():
    img = LayerImage.from_pil(solid(8, 8))
    from layercomposer.canvas import Layer

    with pytest.raises(CanvasError, match="scale: must be positive"):
        Canvas(64, 64, [Layer("a", img, scale=0.0)]).validate()
    with pytest.raises(CanvasError, match="scale: must be finite"):
        Canvas(64, 64, [Layer("a", img, scale=float("inf"))]).validate()
    with pytest.raises(CanvasError, match="duplicate layer name"):
        Canvas(64, 64, [Layer("a", img), Layer("a", img)]).validate()
    with pytest.raises(CanvasError, match="width: 10000 is outside"):
        Canvas(10000, 64).validate()


def test_size_note():
    assert Canvas(256, 256).size_note() is None
    assert Canvas(100, 70).size_note().startswith("canvas 100x70 is generated at 96x64")
