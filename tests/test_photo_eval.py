"""`eval photos` (the paper's Table 1) and the user-study page, end to end on tiny random engines and canvases
built from scikit-image's astronaut and cameraman photos. Nothing is downloaded: the engines are random models
built in code, the identity embedder is dlib's (face_recognition_models, the photo extra)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from layercomposer.canvas import load_canvas
from layercomposer.cli import main
from layercomposer.eval.photos import NA_WEIGHTS, locked_region
from layercomposer.photo.identity import DLIB_NAME
from layercomposer.photo.study import build_study, summarise_choices
from tiny_models import save_tiny_kontext, save_tiny_qwen_edit, tiny_clip_tokenizer

skdata = pytest.importorskip("skimage.data")
ENGINES = ["layered", "paste", "refine-kontext", "refine-qwen"]


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def save_tiny_clip(folder):
    """A random CLIP (dual encoder, 32 px images) in transformers' folder layout, with its processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tok = tiny_clip_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Two canvases at 256 px: (1) a crop of the astronaut placed on her own portrait (the prior, locked, as the
    background), (2) the cameraman placed on her face, no background, nothing locked."""
    from layercomposer.photo.canvases import benchmark_canvas

    root = tmp_path_factory.mktemp("bench")
    astronaut = Image.fromarray(skdata.astronaut())
    prior = astronaut.resize((256, 256), Image.Resampling.LANCZOS)
    identity = astronaut.crop((100, 30, 460, 430)).resize((270, 300), Image.Resampling.LANCZOS)
    solo = benchmark_canvas(prior, [identity], prompt="an astronaut in an orange suit", names=["eileen"],
                            with_prior=True)
    solo.layers[0].locked = True
    (root / "canvases").mkdir()
    solo.save(root / "canvases" / "solo.json")
    cameraman = Image.fromarray(skdata.camera()).convert("RGB")
    duo = benchmark_canvas(prior, [cameraman], prompt="a photographer", names=["cameraman"])
    duo.save(root / "canvases" / "photographer.json")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"kontext": save_tiny_kontext(root / "kontext"), "qwen": save_tiny_qwen_edit(root / "qwen"),
            "clip": save_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def results(bench, models):
    out = bench / "results"
    code, _, err = run_cli(
        "eval", "photos", "--canvases", str(bench / "canvases"), "--engines", ",".join(ENGINES),
        "--model", "tiny-random", "--kontext-model", str(models["kontext"]), "--qwen-model", str(models["qwen"]),
        "--clip-model", str(models["clip"]), "--embedder", "dlib", "--steps", "2", "--out", str(out),
    )
    assert code == 0, err
    return out, err


def test_table_has_every_engine_the_embedder_and_missing_weights(results):
    out, err = results
    table = (out / "table.md").read_text()
    report = json.loads((out / "table.json").read_text())
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[2:]
    assert DLIB_NAME in header and report["embedder"] == DLIB_NAME
    for engine in ENGINES:
        assert sum(line.startswith(f"| {engine} (") for line in body) == 1, engine
    columns = [c.strip() for c in header.strip("|").split("|")]
    vqa, clip, hps = (next(i for i, c in enumerate(columns) if key in c) for key in ("VQAScore", "CLIPScore", "HPSv3"))
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[vqa] == NA_WEIGHTS and cells[hps] == NA_WEIGHTS, line
        assert 0.0 <= float(cells[clip]) <= 100.0, line  # the tiny local CLIP folder: a number
    assert "CLIPScore (clip)" in header
    assert "t2v_metrics" in table or "clip-flant5" in table  # why VQAScore is missing
    assert not report["metrics"]["vqascore"]["available"] and report["metrics"]["clipscore"]["available"]
    # One line per engine on stderr and the summary; no library progress bars.
    assert err.count("\n") == len(ENGINES) + 1 and "Loading" not in err, err
    for case in report["per_canvas"]:
        for engine in ENGINES:
            assert Image.open(out / case["engines"][engine]["output"]).size == (256, 256)


def test_paste_baseline_keeps_the_identity_and_the_locked_pixels(results):
    out, _ = results
    report = json.loads((out / "table.json").read_text())
    paste = report["engines"]["paste"]
    # Naive pasting shows each identity's own pixels (scaled): dlib finds both and calls them the same person.
    assert paste["identity"]["detected"] == 2 and paste["identity"]["same_person"] == 2
    assert paste["identity"]["cosine"] > 0.9  # measured 0.957
    assert paste["locked_psnr"] == {"mean_db": 100.0, "canvases": 1}  # identical pixels (psnr's cap)
    # Random engines draw noise: no face, and a low PSNR on the locked prior.
    for engine in ("layered", "refine-kontext", "refine-qwen"):
        row = report["engines"][engine]
        assert row["identity"]["identities"] == 2 and row["locked_psnr"]["canvases"] == 1
        assert row["locked_psnr"]["mean_db"] < 20
    solo = next(c for c in report["per_canvas"] if c["id"] == "solo")
    duo = next(c for c in report["per_canvas"] if c["id"] == "photographer")
    assert solo["identities"] == ["eileen"] and duo["identities"] == ["cameraman"]
    assert duo["locked_pixels"] == 0 and all(e["locked_psnr"] is None for e in duo["engines"].values())


def test_locked_psnr_matches_an_independent_computation(results, bench):
    out, _ = results
    report = json.loads((out / "table.json").read_text())
    solo = next(c for c in report["per_canvas"] if c["id"] == "solo")
    canvas = load_canvas(bench / "canvases" / "solo.json")
    prior, person = canvas.layers
    assert prior.locked and not person.locked and prior.is_background
    # The opaque prior covers the canvas; a pixel is locked where the person layer lets >= 99% of it through.
    alpha = np.asarray(canvas.render_layer(person).getchannel("A"), np.float64) / 255.0
    mask = (1.0 - alpha) >= 0.99
    assert np.array_equal(mask, locked_region(canvas)) and 0.5 < mask.mean() < 0.95
    white = Image.new("RGBA", (256, 256), "white")
    flat = np.asarray(Image.alpha_composite(white, canvas.flatten()).convert("RGB"), np.float64)
    prior_pixels = np.asarray(prior.image.rgba.convert("RGB"), np.float64)  # 256 px: drawn as it is
    assert np.array_equal(flat[alpha == 0], prior_pixels[alpha == 0])
    for engine in ("layered", "refine-kontext", "refine-qwen"):
        output = np.asarray(Image.open(out / solo["engines"][engine]["output"]).convert("RGB"), np.float64)
        mse = ((output - flat) ** 2)[mask].mean()
        expected = 10 * math.log10(255.0**2 / mse)
        assert solo["engines"][engine]["locked_psnr"] == pytest.approx(expected, abs=1e-6), engine


def test_clipscore_matches_clips_own_logits(results, models, bench):
    from transformers import CLIPModel, CLIPProcessor

    out, _ = results
    report = json.loads((out / "table.json").read_text())
    solo = next(c for c in report["per_canvas"] if c["id"] == "solo")
    model = CLIPModel.from_pretrained(str(models["clip"])).eval()
    processor = CLIPProcessor.from_pretrained(str(models["clip"]))
    image = Image.open(out / solo["engines"]["paste"]["output"]).convert("RGB")
    inputs = processor(text=[solo["prompt"]], images=[image], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
        cos = float(logits[0, 0] / model.logit_scale.exp())
    assert solo["engines"]["paste"]["clipscore"] == pytest.approx(100 * max(cos, 0.0), abs=1e-3)


def test_engines_that_cannot_load(bench, tmp_path):
    canvases = str(bench / "canvases")
    # Asked alone: a one-line error naming what is missing, and nothing written.
    code, _, err = run_cli("eval", "photos", "--canvases", canvases, "--engines", "refine-kontext",
                           "--out", str(tmp_path / "a"))
    assert code == 2 and err.count("\n") == 1 and "no --kontext-model given" in err, err
    assert not (tmp_path / "a" / "table.md").exists()
    # Among several: skipped, its row says why; the others run. (Results inside the canvases folder, twice:
    # results folders are not taken for canvases.)
    shutil.copytree(canvases, tmp_path / "canvases")
    # "collage" is the old name of the paste engine, still read.
    for results_dir in ("b", "b2"):
        code, _, err = run_cli("eval", "photos", "--canvases", str(tmp_path / "canvases"), "--engines",
                               "collage,refine-qwen", "--embedder", "hog-colour", "--out",
                               str(tmp_path / "canvases" / results_dir))
        assert code == 0, err
    assert "refine-qwen: skipped (no --qwen-model given" in err
    table = (tmp_path / "canvases" / "b2" / "table.md").read_text()
    assert "| refine-qwen | skipped: no --qwen-model given" in table and "hog-colour-v1" in table
    report = json.loads((tmp_path / "canvases" / "b2" / "table.json").read_text())
    assert report["engines"]["refine-qwen"]["status"] == "skipped" and report["canvases"] == 2
    assert report["engines"]["paste"]["identity"]["detected"] == 2
    code, _, err = run_cli("eval", "photos", "--canvases", canvases, "--engines", "paste,nope", "--out",
                           str(tmp_path / "c"))
    assert code == 2 and "unknown engine 'nope'" in err
    code, _, err = run_cli("eval", "photos", "--canvases", str(tmp_path / "none"), "--out", str(tmp_path / "d"))
    assert code == 2 and "no such folder" in err
    code, _, err = run_cli("eval", "photos", "--canvases", canvases, "--embedder", "arcface", "--arcface-dir",
                           str(tmp_path), "--out", str(tmp_path / "e"))
    assert code == 2 and err.count("\n") == 1 and "--embedder arcface needs" in err, err


def test_locked_region_and_lock_modes(make_canvas):
    from conftest import layer, solid
    from layercomposer.eval.photos import apply_lock

    # Back to front: a locked opaque background, an unlocked square with a half-transparent band, a locked
    # square over part of it.
    band = solid(40, 40, (0, 0, 255, 255))
    band.paste((0, 0, 255, 128), (0, 0, 40, 10))
    canvas = make_canvas(96, 96, [
        layer("bg", solid(96, 96, (10, 200, 10, 255)), kind="background", locked=True),
        layer("free", band, x=16, y=16),
        layer("held", solid(16, 16, (200, 0, 0, 255)), x=40, y=40, locked=True),
    ])
    mask = locked_region(canvas)
    expected = np.ones((96, 96), bool)
    expected[16:56, 16:56] = False  # under the unlocked layer, the half-transparent band included
    expected[40:56, 40:56] = True  # the locked square on top of it
    assert np.array_equal(mask, expected)
    none = apply_lock(canvas, "none")
    assert not locked_region(none).any() and canvas.layers[0].locked  # a copy: the canvas is unchanged
    bg = apply_lock(canvas, "background")
    assert [x.locked for x in bg.layers] == [True, False, False]
    assert locked_region(bg).sum() == 96 * 96 - 40 * 40


# ----------------------------------------------------------------------------------------------------------
# User study


def test_study_page_shows_every_output_once_in_a_seeded_order(results, tmp_path):
    out, _ = results
    report = json.loads((out / "table.json").read_text())
    page = tmp_path / "study.html"
    code, _, err = run_cli("eval", "study", "--results", str(out), "-o", str(page), "--seed", "3")
    assert code == 0, err
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN, nothing fetched
    for case in report["per_canvas"]:
        for engine, record in case["engines"].items():
            data = base64.b64encode((out / record["output"]).read_bytes()).decode()
            assert html.count(data) == 1, (case["id"], engine)
    # Engine names are not shown: only in the page's data block.
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    for engine in ENGINES:
        assert engine not in visible
    data = json.loads(re.search(r'id="study-data">(.*?)</script>', html, re.S).group(1))
    orders = {item["canvas"]: item["order"] for item in data["items"]}
    assert set(orders) == {"solo", "photographer"}
    assert all(sorted(order) == sorted(ENGINES) for order in orders.values())
    # Same seed, same page; the order is the one the images are shown in.
    items = build_study(out, tmp_path / "again.html", seed=3)
    assert (tmp_path / "again.html").read_text() == html
    for item in items:
        assert item.order == orders[item.canvas]
        shown = [m.start() for m in (re.search(re.escape(base64.b64encode(p.read_bytes()).decode()), html)
                                     for p in item.images)]
        assert shown == sorted(shown)
    assert any(i.order != sorted(ENGINES) for i in build_study(out, tmp_path / "s.html", seed=0)
               + build_study(out, tmp_path / "t.html", seed=1))
    # --link: relative paths instead of data URIs.
    build_study(out, out / "linked.html", seed=3, link=True)
    assert 'src="outputs/solo/layered.png"' in (out / "linked.html").read_text()


def test_study_page_script_records_and_downloads_choices(results, tmp_path):
    """Run the page's script in node with a minimal DOM: two clicks, then "Download choices"."""
    import subprocess

    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must install node (see .ci/run)")
        pytest.skip("node is not installed (apt-get install nodejs)")
    out, _ = results
    page = tmp_path / "study.html"
    items = build_study(out, page, seed=5)
    html = page.read_text()
    data = re.search(r'id="study-data">(.*?)</script>', html, re.S).group(1)
    script = re.findall(r"<script>(.*?)</script>", html, re.S)[-1]
    harness = (tmp_path / "harness.js")
    harness.write_text(DOM_STUB.replace("__DATA__", json.dumps(data)) + script + CLICKS)
    result = subprocess.run([node, str(harness)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    choices = json.loads(result.stdout)
    assert choices["format"] == "layercomposer-study-choices/1" and choices["seed"] == 5
    by_canvas = {c["canvas"]: c for c in choices["choices"]}
    first, second = items
    assert by_canvas[first.canvas]["chosen"] == first.order[2] and by_canvas[first.canvas]["order"] == first.order
    assert by_canvas[second.canvas]["chosen"] == second.order[0] and by_canvas[second.canvas]["position"] == 0


# A DOM just big enough for the page's script: sections with four figures each, a click on figure 1 then 2 of
# the first section (the later click wins), figure 0 of the second; the download prints the Blob's text.
DOM_STUB = """
const STUDY_TEXT = __DATA__;
const STUDY_ITEMS = JSON.parse(STUDY_TEXT).items;
function el(props) { return Object.assign({listeners: {}, classList: {toggle() {}},
  addEventListener(t, f) { this.listeners[t] = f; }}, props); }
const sections = STUDY_ITEMS.map(it => el({dataset: {canvas: it.canvas}}));
const figures = [];
sections.forEach(s => { s.figs = it_figs(s); });
function it_figs(s) { const out = []; for (let i = 0; i < 4; i++) { const f = el({dataset: {position: String(i)},
  closest() { return s; }}); out.push(f); figures.push(f); } s.querySelectorAll = () => out; return out; }
const byId = {"study-data": {textContent: STUDY_TEXT}, count: {}, download: el({}), reset: el({})};
globalThis.document = {getElementById: id => byId[id], querySelectorAll: sel => sel === ".item" ? sections : figures,
  createElement: () => ({click() { globalThis.clicked = true; }, remove() {}}), body: {appendChild() {}}};
globalThis.localStorage = {store: {}, getItem(k) { return this.store[k] || null; },
  setItem(k, v) { this.store[k] = v; }, removeItem(k) { delete this.store[k]; }};
let downloaded = null;
globalThis.Blob = function (parts) { downloaded = parts.join(""); };
globalThis.URL = {createObjectURL: () => "blob:x", revokeObjectURL() {}};
globalThis.setTimeout = () => {};
globalThis.confirm = () => true;
"""
CLICKS = """
sections[0].figs[1].listeners.click();
sections[0].figs[2].listeners.click();
sections[1].figs[0].listeners.click();
byId.download.listeners.click();
if (!globalThis.clicked) throw new Error("no download");
process.stdout.write(downloaded);
"""


def test_study_summary_win_rates(tmp_path):
    a = {"format": "layercomposer-study-choices/1", "choices": [
        {"canvas": "c1", "order": ["paste", "layered", "refine-qwen"], "chosen": "layered", "position": 1},
        {"canvas": "c2", "order": ["layered", "refine-qwen", "paste"], "chosen": "refine-qwen", "position": 1},
        {"canvas": "c3", "order": ["refine-qwen", "layered"], "chosen": "layered", "position": 1},
    ]}
    b = {"format": "layercomposer-study-choices/1", "choices": [
        {"canvas": "c1", "order": ["layered", "paste", "refine-qwen"], "chosen": "layered", "position": 0},
    ]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    summary = summarise_choices([tmp_path / "a.json", tmp_path / "b.json"])
    assert summary["choices"] == 4
    # layered: shown 4 times, won 3; refine-qwen: shown 4, won 1; paste: shown 3, won 0.
    assert summary["engines"]["layered"] == {"wins": 3, "shown": 4, "win_rate": 0.75, "share": 0.75}
    assert summary["engines"]["refine-qwen"]["win_rate"] == 0.25
    assert summary["engines"]["paste"] == {"wins": 0, "shown": 3, "win_rate": 0.0, "share": 0.0}
    assert list(summary["engines"]) == ["layered", "refine-qwen", "paste"]
    code, stdout, _ = run_cli("eval", "study-summary", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert code == 0
    layered_line = next(line for line in stdout.splitlines() if line.startswith("layered"))
    assert "75.0%" in layered_line and stdout.splitlines()[0] == "4 choices"
    (tmp_path / "bad.json").write_text(json.dumps({"choices": [{"order": ["a"], "chosen": "b"}]}))
    code, _, err = run_cli("eval", "study-summary", str(tmp_path / "bad.json"))
    assert code == 2 and "choices[0]" in err and err.count("\n") == 1
