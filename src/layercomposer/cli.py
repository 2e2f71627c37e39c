"""The `layercomposer` command line: generate, tokens, flatten, models.

Bad input prints one line on stderr and exits with code 2; no traceback and no partial output file.
Heavy imports (torch, diffusers) happen only in the commands that run a model.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from .errors import LayerComposerError

EXIT_BAD_INPUT = 2
_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


DEFAULT_MAX_TOKENS = 16384
"""`generate --max-tokens`, `refine --max-tokens` and the editor's default (the server's `DEFAULT_MAX_TOKENS`)."""

REGISTERED_MODELS = ("tiny-random", "demo-base")
"""The names of `models.registry.REGISTRY`, known here without importing it (it imports torch); a test keeps
the two in step."""


def check_model_name(model: str) -> None:
    """Refuse a `--model` that names nothing, before torch, diffusers and transformers are imported (the
    loader checks everything else about a model that does exist)."""
    path = Path(model)
    if path.exists() or model in REGISTERED_MODELS:
        return
    weights = Path(__file__).resolve().parent / "weights"
    shipped = sorted(p.name for p in weights.iterdir() if (p / "model_index.json").is_file()) \
        if weights.is_dir() else []
    if model in shipped:
        return
    if "/" in model and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
        return  # a hub id: the loader looks for it in the local cache
    from .errors import ModelError

    choices = ", ".join(sorted({*REGISTERED_MODELS, *shipped}))
    raise ModelError(f"unknown model {model!r}: use one of {choices} or a model directory")


def default_model() -> str:
    """The shipped demo model when installed, else the tiny random one."""
    from .models.registry import shipped_models

    return "demo" if "demo" in shipped_models() else "tiny-random"


def build_parser() -> argparse.ArgumentParser:
    from .conditioning import MODES, PRUNE_RULES  # imported by the training flags below anyway

    parser = argparse.ArgumentParser(
        prog="layercomposer",
        description="Render a layered canvas (RGBA layers placed, scaled, rotated and locked) into one picture.",
    )
    parser.add_argument("--version", action="version", version=f"layercomposer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="render a canvas into a picture",
                         description="Render a canvas (.json or .lcz) into a picture with a model.")
    gen.add_argument("canvas", metavar="CANVAS", help="canvas .json file or .lcz bundle")
    gen.add_argument("-o", "--output", default="out.png", help="output image (.png, .jpg, .webp); default out.png")
    gen.add_argument("--prompt", help="prompt (default: the canvas's own)")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gen.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 28)")
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    gen.add_argument("--model", default=None,
                     help="model name (demo, demo-collage, tiny-random) or directory (default: demo): ours, a FLUX.1 "
                     "Kontext or a FLUX.2 [klein] folder; on a Kontext or klein base without a layered LoRA (--lora) "
                     "the picture is the base model's guess at our conditioning")
    gen.add_argument("--mode", choices=MODES, default="layered",
                     help="conditioning: layered (pruned, default), unpruned, or collage (flattened)")
    gen.add_argument("--hard-lock", action="store_true",
                     help="also hold the latent pixels showing only locked layers to their latents while sampling "
                     "(inpainting-style; exact locked pixels up to the VAE)")
    gen.add_argument("--strength", type=float, default=1.0,
                     help="image-to-image: start from the flattened canvas and run this share of the steps "
                     "(0-1; lower keeps the canvas as drawn, 1 = from noise, the default)")
    gen.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="LoRA file (diffusers/peft or kohya format), repeatable; scale defaults to 1")
    gen.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                     help="refuse a canvas of more tokens than this (noisy + condition; default "
                     f"{DEFAULT_MAX_TOKENS}, about 1024x1024 px): time and memory grow with it, the largest "
                     "canvas (4096x4096) runs for hours on a CPU")
    add_memory_arguments(gen)
    gen.set_defaults(func=cmd_generate, quick_exit=True)

    tok = sub.add_parser("tokens", help="conditioning token statistics of a canvas (no model)",
                         description="Count the conditioning tokens a canvas gives, per layer and per mode.")
    tok.add_argument("canvas", metavar="CANVAS")
    tok.add_argument("--json", action="store_true", help="print JSON instead of a table")
    tok.add_argument("--model", default=None,
                     help="count as this model does (its merged locked layers and pruning rule, read from its "
                     "model_index.json; no weights loaded); default: one group per layer, centre pruning "
                     "(docs/DESIGN.md section 3)")
    tok.add_argument("--merge-locked", action="store_true",
                     help="count as a model with merged locked layers does (one group for all locked layers)")
    tok.add_argument("--prune", choices=PRUNE_RULES, default=None,
                     help="pruning rule: centre (the default, docs/DESIGN.md section 3: a cell is kept iff its "
                     "centre pixel is opaque) or cover (iff any of its pixels is)")
    tok.set_defaults(func=cmd_tokens)

    flat = sub.add_parser("flatten", help="flatten a canvas into its rough collage",
                          description="Alpha-composite the visible layers back to front into one image.")
    flat.add_argument("canvas", metavar="CANVAS")
    flat.add_argument("-o", "--output", required=True, help="output image (.png keeps transparency)")
    flat.set_defaults(func=cmd_flatten)

    models = sub.add_parser("models", help="list the named models")
    models.set_defaults(func=cmd_models)

    from .training.config import add_train_arguments, add_vae_arguments

    tr = sub.add_parser("train", help="train a model on scenes (full or LoRA; accelerate)",
                        description="Locking-aware flow-matching training of a FLUX transformer, full or LoRA. "
                        "Also runs as `accelerate launch -m layercomposer.training.train ...`.")
    add_train_arguments(tr)
    tr.set_defaults(func=cmd_train)
    te = sub.add_parser("train-export", help="export one checkpoint of a training run as a model folder",
                        description="Turn a checkpoint of a full-training run into a pipeline folder that "
                        "--model accepts (the newest one unless --step is given).")
    te.add_argument("run", help="the run folder given to `train --output`")
    te.add_argument("-o", "--output", required=True, help="new model folder")
    te.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    te.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    te.add_argument("--name", default=None, help="model name stored in the folder (default: its folder name)")
    te.add_argument("--guidance", type=float, default=None, help="default guidance scale stored in the folder")
    te.add_argument("--vae", default=None, metavar="DIR",
                    help="use this VAE instead of the run's (a decoder fine-tuned with train-vae --decoder-only)")
    te.add_argument("--no-ema", dest="ema", action="store_false",
                    help="export the raw weights of a run trained with --ema-decay (default: the averaged ones)")
    te.set_defaults(func=cmd_train_export)
    tv = sub.add_parser("train-vae", help="train the demo model's VAE on scenes",
                        description="Train a small AutoencoderKL on scene pictures and layers (the demo's VAE).")
    add_vae_arguments(tv)
    tv.set_defaults(func=cmd_train_vae)

    world = sub.add_parser("world", help="the sprites world: generate scenes")
    world_sub = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    wg = world_sub.add_parser("generate", help="write sprites scenes in the training format")
    wg.add_argument("--out", required=True, help="output folder (one sub-folder per scene)")
    wg.add_argument("--scenes", type=int, required=True, help="number of scenes")
    wg.add_argument("--seed", type=int, default=0)
    wg.add_argument("--size", type=int, default=256, help="picture size in px (multiple of 16, 128..1024)")
    wg.add_argument("--split", choices=("train", "heldout"), default="train",
                    help="identities: train, or held-out (never seen in training)")
    wg.add_argument("--pose-spread", type=float, default=1.0, metavar="S",
                    help="how far a character's pose varies between the pictures of a scene: 0 the same pose "
                         "(only light, place and size change), 1 a fresh pose each time (default)")
    wg.add_argument("--heights", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="draw body heights from this range (fractions of the picture; default: 0.17-0.36, "
                         "smaller with more characters)")
    wg.set_defaults(func=cmd_world_generate)
    we = world_sub.add_parser("examples", help="write the example canvases (held-out identities)")
    we.add_argument("--out", default="examples", help="output folder (default examples/)")
    we.set_defaults(func=cmd_world_examples)

    ref = sub.add_parser("refine", help="refine a rough collage with an image-editing model",
                         description="Flatten a canvas (or take a collage image) and have an instruction "
                         "image-editing model make it one natural picture (FLUX.1 Kontext, FLUX.2 [klein], "
                         "Qwen-Image-Edit, or demo-collage).")
    ref.add_argument("source", metavar="CANVAS|IMAGE", help="canvas .json / .lcz, or a collage image")
    ref.add_argument("-o", "--output", default="refined.png")
    ref.add_argument("--model", default=None,
                     help="FLUX.1 Kontext (backend kontext), FLUX.2 [klein] (backend klein) or "
                     "Qwen-Image-Edit(-Plus) (backend qwen) folder or cached hub id, or demo-collage (default)")
    ref.add_argument("--backend", choices=("kontext", "klein", "qwen", "demo"), default=None,
                     help="default: kontext for a FLUX.1 Kontext model, klein for a FLUX.2 [klein] model, qwen for "
                     "a Qwen-Image-Edit(-Plus) model, demo otherwise")
    ref.add_argument("--layers-as-references", action="store_true",
                     help="qwen backend with a Plus model: also pass each visible layer as a reference image; klein "
                     "backend: each unlocked layer, up to klein's 4 images (the collage included)")
    ref.add_argument("--instruction", default=None, help="editing instruction (default: make it one photo)")
    ref.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]", help="LoRA file, repeatable")
    ref.add_argument("--trigger", default=None, help="trigger phrase to prepend (known collage LoRAs: automatic)")
    ref.add_argument("--steps", type=int, default=28)
    ref.add_argument("--guidance", type=float, default=None)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--device", default=None)
    ref.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                     help="refuse a source of more tokens than this (noisy + the collage, one token per 16x16 px; "
                     f"the demo backend counts a canvas as the collage mode does; default {DEFAULT_MAX_TOKENS}, "
                     "about 1024x1024 px)")
    add_memory_arguments(ref, dtype=False, vae_tiling=False)
    ref.set_defaults(func=cmd_refine, quick_exit=True)

    srv = sub.add_parser("serve", help="start the editor (web app + API)",
                         description="Serve the layered-canvas editor and its JSON API (docs at /docs).")
    srv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=int, default=7860)
    srv.add_argument("--model", default=None, help="model name or directory (default: demo)")
    srv.add_argument("--outputs", default="outputs", help="folder for results and uploads (default outputs/)")
    srv.add_argument("--token", default=None, help="require this bearer token on every API call")
    srv.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="a host name the editor may be reached by besides localhost, 127.0.0.1, [::1] and the "
                     "address it listens on (other Host headers are refused: DNS rebinding); repeatable")
    srv.add_argument("--max-tokens", type=int, default=None,
                     help="most tokens (noisy + condition) a job may have; larger canvases are refused "
                     "(default 16384)")
    srv.add_argument("--queue", type=int, default=8, help="most jobs waiting at once (more get 429)")
    srv.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    srv.add_argument("--refine-model", default=None,
                     help="model of the editor's refine mode (FLUX.1 Kontext folder / hub id; default: "
                     "demo-collage when installed)")
    add_memory_arguments(srv, dtype=False, vae_tiling=False)
    srv.set_defaults(func=cmd_serve)

    ev = sub.add_parser("eval", help="evaluate models")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")
    es = ev_sub.add_parser("sprites", help="measure against known targets on held-out sprites scenes",
                           description="Locked fidelity, adaptation, layout, prompt adherence and the ablations "
                           "(collage model, lock vs unlock, pruning) on held-out scenes.")
    es.add_argument("--model", default=None, help="layered model (default: demo)")
    es.add_argument("--collage-model", default=None, help="collage-conditioned model for the ablation")
    es.add_argument("--scenes", type=int, default=100, help="number of test canvases (default 100)")
    es.add_argument("--data", default=None, help="held-out scenes folder (default: generated, seed 1)")
    es.add_argument("--steps", type=int, default=28)
    es.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    es.add_argument("--json", default=None, help="write the full report (every case) here")
    es.add_argument("--figures", default=None, help="folder for the figure grids (PNG)")
    es.add_argument("--results", default=None, help="write the Markdown results page here (docs/RESULTS.md)")
    es.add_argument("--machine", default="this machine", help="machine description for the results page")
    es.add_argument("--no-hard-lock", dest="hard_lock", action="store_false",
                    help="skip the extra run of the layered model with --hard-lock")
    es.add_argument("--strength", type=float, default=None,
                    help="also run the layered model image-to-image from the flattened canvas at this strength")
    es.add_argument("--occlusion-only", action="store_true",
                    help="evaluate only canvases whose target shows hidden pixels of an unlocked character (the "
                    "occlusion subset's unlocked part; --scenes of them), layered against "
                    "--collage-model (and hard-locked unless --no-hard-lock), no unpruned run or lock flip; --results "
                    "writes that subset's own page")
    es.add_argument("--identifier", default="shipped", metavar="DIR",
                    help="weights of the identity metric (default: the package's sprites identifier; 'none' "
                         "skips the metric); `eval identifier` trains one")
    es.add_argument("--no-ablations", dest="ablations", action="store_false",
                    help="skip the unpruned run, the lock flip and the copy probe (a quick proxy evaluation)")
    es.add_argument("--occlusion-subset", choices=("unlocked", "all"), default="unlocked",
                    help="with --occlusion-only: select canvases by hidden pixels of unlocked characters (default) "
                    "or of any layer (the occlusion subset RESULTS.md judges the target on)")
    es.set_defaults(func=cmd_eval_sprites)
    ei = ev_sub.add_parser("identifier", help="train the sprites identity metric on renders (about 14 min)",
                           description="Train the identifier that `eval sprites` uses for unlocked characters' "
                           "identity (the sprites world's ArcFace): a small CNN over the held-out identities, "
                           "trained only on fresh renders of them (random pose, size, light, background, "
                           "occluder). Seeded: the same command gives the same weights.")
    ei.add_argument("--out", required=True, help="folder for model.safetensors and config.json")
    ei.add_argument("--seed", type=int, default=0)
    ei.set_defaults(func=cmd_eval_identifier)
    ex = ev_sub.add_parser("examples", help="figure of the example canvases rendered by a model")
    ex.add_argument("--model", default=None, help="layered model (default: demo)")
    ex.add_argument("--collage-model", default=None, help="also render with this collage-conditioned model")
    ex.add_argument("--examples", default="examples", help="folder of example canvases")
    ex.add_argument("--out", default="docs/figures/examples.png")
    ex.add_argument("--steps", type=int, default=28)
    ex.add_argument("--strength", type=float, default=None,
                    help="also render with the layered model image-to-image at this strength")
    ex.set_defaults(func=cmd_eval_examples)
    ep = ev_sub.add_parser("photos", help="the paper's Table 1 on benchmark canvases, for several engines",
                           description="Run each engine on each canvas of --canvases and score the outputs: "
                           "identity (ArcFace when insightface and its models are here, else dlib, else "
                           "hog-colour; named in the table), prompt alignment (VQAScore, CLIPScore) and quality "
                           "(HPSv3) when their weights are here, and locked-region PSNR. Writes table.md, "
                           "table.json and the pictures to --out. An engine that cannot load is an error when it "
                           "is the only one asked for, else its row says why it was skipped.")
    ep.add_argument("--canvases", required=True, metavar="DIR", help="folder of canvases (.json / .lcz)")
    ep.add_argument("--engines", default="layered,collage",
                    help="comma-separated: layered, collage, refine-kontext, refine-qwen, refine-demo "
                    "(default: layered,collage)")
    ep.add_argument("--out", required=True, metavar="DIR", help="results folder")
    ep.add_argument("--model", default=None, help="layered engine's model (default: demo)")
    ep.add_argument("--kontext-model", default=None, metavar="DIR", help="refine-kontext's FLUX.1 Kontext folder")
    ep.add_argument("--qwen-model", default=None, metavar="DIR", help="refine-qwen's Qwen-Image-Edit folder")
    ep.add_argument("--collage-model", default=None, help="refine-demo's model (default: demo-collage)")
    ep.add_argument("--steps", type=int, default=28)
    ep.add_argument("--seed", type=int, default=0)
    ep.add_argument("--guidance", type=float, default=None, help="guidance scale (default: each model's)")
    ep.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    ep.add_argument("--hard-lock", action="store_true", help="layered engine: hard-lock the locked layers")
    ep.add_argument("--lock", choices=("canvas", "background", "none"), default="canvas",
                    help="locks: as the canvas says (default), the background layer only, or none")
    ep.add_argument("--instruction", default=None,
                    help="refine-kontext / refine-qwen instruction; {prompt} is replaced by the canvas prompt")
    ep.add_argument("--embedder", choices=("auto", "arcface", "dlib", "hog-colour"), default="auto",
                    help="face embedding for identity (auto: arcface, else dlib, else hog-colour)")
    ep.add_argument("--arcface-dir", default=None, metavar="DIR",
                    help="insightface model folder (default: ~/.insightface/models/buffalo_l)")
    ep.add_argument("--clip-model", default=None, metavar="DIR", help="local transformers CLIP folder (CLIPScore)")
    ep.add_argument("--vqa-model", default="clip-flant5-xxl", help="t2v_metrics VQAScore model (cached weights)")
    ep.add_argument("--hps-checkpoint", default=None, metavar="FILE", help="HPSv3 checkpoint (hpsv3 package)")
    ep.set_defaults(func=cmd_eval_photos)
    est = ev_sub.add_parser("study", help="a user-study page: the engines' outputs side by side, blind",
                            description="Write one self-contained HTML page from the results of `eval photos`: "
                            "each canvas's outputs in a seeded random order with the engine names hidden; "
                            "participants click the best and download their choices as JSON.")
    est.add_argument("--results", required=True, metavar="DIR", help="the --out folder of `eval photos`")
    est.add_argument("-o", "--output", default="study.html", help="the page (default study.html)")
    est.add_argument("--seed", type=int, default=0, help="seed of the shown order (default 0)")
    est.add_argument("--link", action="store_true",
                     help="reference the pictures by relative paths instead of embedding them")
    est.add_argument("--title", default=None, help="page title")
    est.set_defaults(func=cmd_eval_study)
    ess = ev_sub.add_parser("study-summary", help="win rates per engine from study choices files")
    ess.add_argument("choices", nargs="+", metavar="CHOICES_JSON", help="downloaded choices, one file a person")
    ess.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ess.set_defaults(func=cmd_eval_study_summary)

    cut = sub.add_parser("cutout", help="cut a person or an object out of a photo into an RGBA layer",
                         description="Cut the subject out of a photo: a person (MediaPipe selfie segmentation, "
                         "default) or an object in a box (OpenCV GrabCut); clean, feathered alpha; cropped to the "
                         "content. Needs the photo extra: pip install \"layercomposer[photo]\".")
    cut.add_argument("photo", metavar="PHOTO", help="photo file (.png, .jpg, .webp, ...)")
    cut.add_argument("-o", "--output", required=True, help="output layer (.png or .webp keep transparency)")
    how = cut.add_mutually_exclusive_group()
    how.add_argument("--person", action="store_true", help="segment the person (default)")
    how.add_argument("--box", metavar="X0,Y0,X1,Y1", help="GrabCut the object inside this box (pixels)")
    cut.set_defaults(func=cmd_cutout)

    sc = sub.add_parser("scenes", help="training scenes from photos")
    sc_sub = sc.add_subparsers(dest="scenes_command", required=True, metavar="SCENES_COMMAND")
    sb = sc_sub.add_parser("build", help="turn folders of photos of the same people into training scenes",
                           description="One sub-folder of PHOTOS_DIR per scene (several photos of the same "
                           "people) -> docs/DESIGN.md section 4 scenes: one layer per person per photo, identities "
                           "matched across photos by face embedding, background with the people inpainted away. "
                           "Prompt: <photo>.txt, else the scene's prompt.txt, else --template. Needs the photo "
                           "extra.")
    sb.add_argument("photos", metavar="PHOTOS_DIR")
    sb.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder (one per scene)")
    sb.add_argument("--max-people", type=int, default=4, help="skip photos with more people (default 4)")
    sb.add_argument("--min-face", type=int, default=32, help="smaller faces (px) are not subjects (default 32)")
    sb.add_argument("--max-side", type=int, default=1024, help="downscale larger photos to this (default 1024)")
    sb.add_argument("--min-score", type=float, default=0.6, help="face detection confidence (default 0.6)")
    sb.add_argument("--template", default="a photo of {people}",
                    help="prompt without a sidecar text; {people} and {n} are filled in (default: %(default)r)")
    sb.add_argument("--embedder", choices=("auto", "dlib", "hog-colour"), default="auto",
                    help="face embedding for identities (auto: dlib when installed, else the weak hog-colour)")
    sb.add_argument("--overwrite", action="store_true", help="replace scenes that exist in OUT_DIR")
    sb.set_defaults(func=cmd_scenes_build)

    ph = sub.add_parser("photos", help="photo benchmark tools")
    ph_sub = ph.add_subparsers(dest="photos_command", required=True, metavar="PHOTOS_COMMAND")
    pc = ph_sub.add_parser("canvases", help="a benchmark canvas: identities placed on a prior image's faces",
                           description="Cut each identity photo's person out and place it on a face of the prior "
                           "image (faces paired left to right; one person aligned by the eyes). Writes a canvas "
                           "(.json with images beside it, or .lcz). Needs the photo extra.")
    prior = pc.add_mutually_exclusive_group(required=True)
    prior.add_argument("--prior", help="prior image (its faces give the layout)")
    prior.add_argument("--prior-model", metavar="DIR|HUB_ID",
                       help="make the prior from --prompt with this text-to-image model (a diffusers folder or a hub "
                       "id in the local cache: FLUX.1, SDXL, SD3, Qwen-Image, ...)")
    pc.add_argument("--identity", action="append", required=True, metavar="PHOTO",
                    help="identity photo, repeatable (one per face of the prior)")
    pc.add_argument("--prompt", default=None, help="the canvas's prompt")
    pc.add_argument("--with-prior", action="store_true", help="also put the prior in as the background layer")
    pc.add_argument("--collage", default=None, help="also write the flattened collage (image file)")
    pc.add_argument("-o", "--output", required=True, help="output canvas (.json or .lcz)")
    pc.add_argument("--save-prior", default=None, metavar="IMAGE", help="also write the generated prior")
    add_prior_arguments(pc)
    pc.set_defaults(func=cmd_photos_canvases)
    pb = ph_sub.add_parser("batch", help="many benchmark canvases from a JSON spec of prompts and identity sets",
                           description="For each item of SPEC (name, prompt, identity photos, optional prior image "
                           "and seed), place the identities on the prior's faces; items without a prior get one "
                           "from --prior-model. Writes OUT/<name>.lcz, OUT/collages/<name>.png and "
                           "OUT/priors/<name>.png; existing canvases are skipped (--overwrite to redo). The spec "
                           "format is in layercomposer/photo/batch.py. Needs the photo extra.")
    pb.add_argument("spec", metavar="SPEC_JSON")
    pb.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    pb.add_argument("--prior-model", metavar="DIR|HUB_ID", default=None,
                    help="text-to-image model for items without a prior image")
    pb.add_argument("--overwrite", action="store_true", help="redo items whose canvas exists")
    add_prior_arguments(pb)
    pb.set_defaults(func=cmd_photos_batch)
    return parser


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("prior generation (with --prior-model)")
    group.add_argument("--prior-steps", type=int, default=28, help="sampling steps (default 28)")
    group.add_argument("--prior-guidance", type=float, default=None, help="guidance scale (default: the model's)")
    group.add_argument("--prior-size", default=None, metavar="WxH",
                       help="prior size, rounded down to 16 px (default: the spec's, else 1024x1024)")
    group.add_argument("--seed", type=int, default=0,
                       help="prior seed (batch: for items without a seed of their own; default 0)")
    group.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    group.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="prior model dtype (auto: bfloat16 on CUDA, float32 on the CPU)")


def add_memory_arguments(parser: argparse.ArgumentParser, dtype: bool = True, vae_tiling: bool = True) -> None:
    """--quantize, --gguf, --offload, --attention-backend (and --dtype, --vae-tiling where the command has them)."""
    if dtype:
        parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                            help="weights and compute dtype (auto: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--quantize", choices=("int8", "fp8", "nf4"), default=None,
                        help="quantize the transformer on load: int8 (torchao weight-only, bf16; CPU or GPU), fp8 "
                        "(torchao; CUDA, compute capability 8.9+), nf4 (bitsandbytes 4-bit; CUDA); needs "
                        "pip install 'layercomposer[lowmem]'")
    parser.add_argument("--gguf", default=None, metavar="FILE",
                        help="read the transformer from this GGUF file (diffusers' GGUF loader; its config from the "
                        "model folder)")
    parser.add_argument("--offload", choices=("none", "model", "group", "sequential"), default="none",
                        help="CPU offload: whole models (model), diffusers' group offloading, a transformer block at a "
                        "time (group), or layer by layer (sequential, least memory)")
    parser.add_argument("--attention-backend", default=None, metavar="NAME",
                        help="diffusers' attention kernel: native (default), flash, flash_varlen, _flash_3, sage, ...")
    if vae_tiling:
        parser.add_argument("--vae-tiling", action="store_true", help="tiled VAE encode/decode for large canvases")


def load_options(args: argparse.Namespace) -> Any:
    """The `models.lowmem.LoadOptions` of a command's --quantize / --gguf (checked before the model loads)."""
    from .models.lowmem import LoadOptions

    return LoadOptions(quantize=getattr(args, "quantize", None), gguf=getattr(args, "gguf", None))


def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer",
                 "bitsandbytes")
"""Loggers of the optional low-memory packages that warn at import time (torchao's CUDA-only kernels missing on a
CPU, its pytree registrations; diffusers importing them): errors only, so a command's stderr stays ours."""


def quiet_library_logs() -> None:
    import logging

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _run(args: argparse.Namespace) -> int:
    quiet_library_logs()
    try:
        return int(args.func(args) or 0)
    except LayerComposerError as exc:
        print(f"layercomposer: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("layercomposer: interrupted", file=sys.stderr)
        return 130


def console(argv: Sequence[str] | None = None) -> NoReturn:
    """The `layercomposer` command (and `python -m layercomposer`): `main`, then the process exits.

    After a one-shot model command (`generate`, `refine`) the interpreter's own shutdown, which tears down
    the 3,000-odd modules that torch, diffusers and transformers import one by one, costs 0.4-0.8 s on a
    2-core CPU (benchmarks/startup.py). Those commands have written their outputs (atomically) and
    closed their files by then, so the process runs the exit handlers, flushes its streams and ends
    without that teardown. Every other command exits normally.
    """
    args = build_parser().parse_args(argv)
    code = _run(args)
    if getattr(args, "quick_exit", False):
        quick_exit(code)
    sys.exit(code)


def quick_exit(code: int) -> NoReturn:
    """Run the exit handlers, flush stdout and stderr, and end the process without module teardown."""
    import atexit
    import contextlib

    atexit._run_exitfuncs()  # logging, multiprocessing, huggingface_hub...: what a normal exit runs
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said there
            stream.flush()
    os._exit(code)


# ----------------------------------------------------------------------------------------------------------
# Commands


def cmd_generate(args: argparse.Namespace) -> int:
    from .canvas import load_canvas

    model = args.model or default_model()
    check_model_name(model)
    output = _check_output(args.output)
    canvas = load_canvas(args.canvas)  # bad input fails before the (slow) model load
    if canvas.size_note():
        print(f"layercomposer: note: {canvas.size_note()}", file=sys.stderr)
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise LayerComposerError(f"--steps: must be between 1 and 1000, got {args.steps}")
    if not 0.0 < args.strength <= 1.0:  # NaN fails too
        raise LayerComposerError(f"--strength: must be in (0, 1], got {args.strength}")
    if args.strength < 1.0 and not canvas.visible_layers():
        raise LayerComposerError("--strength: below 1 needs a visible layer to start from")
    _check_token_count(canvas, model, args.mode, args.max_tokens, args.steps, args.device, args.dtype)
    from .models.flux import parse_lora_spec

    for spec in args.lora:
        parse_lora_spec(spec)  # a missing file fails before the model load

    load = load_options(args)
    t0 = time.perf_counter()
    pipe = _load_pipeline(model, args.device, args.dtype, args.offload, args.vae_tiling, load,
                          args.attention_backend)
    pipe.load_loras(args.lora)
    load_s = time.perf_counter() - t0

    from tqdm import tqdm

    from .pipeline import skipped_steps

    steps = args.steps or pipe.default_steps
    steps_run = steps - skipped_steps(steps, args.strength)
    bar = tqdm(total=steps_run, desc="sampling", unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        result = pipe.generate(canvas, prompt=args.prompt, num_inference_steps=args.steps,
                               guidance_scale=args.guidance, seed=args.seed, mode=args.mode,
                               callback=lambda event: bar.update(1), hard_lock=args.hard_lock,
                               strength=args.strength)
    finally:
        bar.close()
    settings = {**result.settings(), "model": model, "canvas": str(args.canvas)}
    _save_image(result.image, output, metadata=settings)
    plan = result.plan
    held = "" if result.hard_locked is None else f", {result.hard_locked} latent pixels (8 px) hard-locked"
    if result.strength < 1.0:
        held += f", strength {result.strength:g}: {steps_run} of {steps} steps"
    print(
        f"wrote {output} ({result.image.width}x{result.image.height}, {plan.total} condition tokens "
        f"[{plan.mode}] + {plan.noisy} noisy{held}; load {load_s:.1f}s, condition {result.seconds['condition']:.1f}s, "
        f"sample {result.seconds['sample']:.1f}s, decode {result.seconds['decode']:.1f}s)",
        file=sys.stderr,
    )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from .canvas import load_canvas
    from .conditioning import TokenRules, token_stats

    rules = TokenRules()
    if args.model:
        from .models.registry import resolve_model, token_rules

        resolve_model(args.model)  # a model that does not exist is an error here, not the default rules
        rules = token_rules(args.model)
    rules = TokenRules(args.merge_locked or rules.merge_locked, args.prune or rules.prune)
    canvas = load_canvas(args.canvas)
    stats = token_stats(canvas, rules=rules)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    rows, cols = stats["grid"]
    w, h = canvas.generation_size
    print(f"canvas {canvas.width}x{canvas.height}, generated at {w}x{h}: grid {rows}x{cols} = {rows * cols} "
          f"noisy tokens")
    name_w = max([5, *(len(layer["name"]) for layer in stats["layers"])])
    print(f"{'layer':<{name_w}}  {'locked':>6}  {'index':>5}  {'tokens':>6}  {'coverage':>8}")
    for layer in stats["layers"]:
        print(f"{layer['name']:<{name_w}}  {'yes' if layer['locked'] else 'no':>6}  {layer['index']:>5}  "
              f"{layer['tokens']:>6}  {100 * layer['coverage']:>7.1f}%")
    if stats["hidden"]:
        print(f"hidden (no tokens): {', '.join(stats['hidden'])}")
    print(f"condition tokens: layered {stats['total']}, unpruned {stats['unpruned_total']}, "
          f"collage {stats['collage_total']}")
    return 0


def cmd_flatten(args: argparse.Namespace) -> int:
    from .canvas import load_canvas

    output = _check_output(args.output)
    canvas = load_canvas(args.canvas)
    _save_image(canvas.flatten(), output, metadata={"canvas": str(args.canvas)})
    print(f"wrote {output} ({canvas.width}x{canvas.height}, {len(canvas.visible_layers())} visible layers)",
          file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import REGISTRY, shipped_models

    default = default_model()
    for name, path in shipped_models().items():
        print(f"{name:<14} shipped   {path}{'  (default)' if name == default else ''}")
    for name, config in REGISTRY.items():
        print(f"{name:<14} random    {config.description}{'  (default)' if name == default else ''}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import train_config_from_args
    from .training.train import train

    train(train_config_from_args(args))
    return 0


def cmd_train_export(args: argparse.Namespace) -> int:
    from .training.train import export_checkpoint

    out = export_checkpoint(args.run, args.output, step=args.step, dtype=args.dtype, name=args.name,
                            guidance_scale=args.guidance, ema=args.ema, vae=args.vae)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from .training.config import vae_config_from_args
    from .training.vae import train_vae

    out = train_vae(vae_config_from_args(args))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_world_generate(args: argparse.Namespace) -> int:
    from .world import generate_dataset

    if not 1 <= args.scenes <= 1_000_000:
        raise LayerComposerError(f"--scenes: must be between 1 and 1000000, got {args.scenes}")
    if args.size % 16 or not 128 <= args.size <= 1024:
        raise LayerComposerError(f"--size: must be a multiple of 16 in 128..1024, got {args.size}")
    if not 0.0 <= args.pose_spread <= 1.0:
        raise LayerComposerError(f"--pose-spread: must be in 0..1, got {args.pose_spread}")
    heights = tuple(args.heights) if args.heights else None
    if heights and not 0.05 <= heights[0] <= heights[1] <= 0.8:
        raise LayerComposerError(f"--heights: need 0.05 <= LO <= HI <= 0.8, got {heights[0]} {heights[1]}")
    paths = generate_dataset(args.out, args.scenes, seed=args.seed, size=args.size, split=args.split, progress=True,
                             pose_spread=args.pose_spread, heights=heights)
    print(f"wrote {len(paths)} scenes to {args.out}", file=sys.stderr)
    return 0


def cmd_world_examples(args: argparse.Namespace) -> int:
    from .world.examples import make_examples

    for path in make_examples(args.out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    check_model_name(args.model or "demo-collage")
    from .canvas import load_canvas
    from .imageio import decode_image
    from .models.flux import parse_lora_spec
    from .models.registry import resolve_model

    output = _check_output(args.output)
    source_path = Path(args.source)
    if source_path.suffix.lower() in (".json", ".lcz"):
        source = load_canvas(source_path)
    else:
        from .canvas import read_regular_file
        from .imageio import MAX_IMAGE_BYTES

        source = decode_image(read_regular_file(source_path, MAX_IMAGE_BYTES, args.source, "an image file"),
                              args.source)
    if not 1 <= args.steps <= 1000:
        raise LayerComposerError(f"--steps: must be between 1 and 1000, got {args.steps}")
    for spec in args.lora:
        parse_lora_spec(spec)
    model = args.model or "demo-collage"

    from tqdm import tqdm

    from .modelcheck import check_model
    from .refine import RefineEngine, RefineSettings, auto_backend, instruction_text

    check_model(model)
    backend = args.backend or auto_backend(resolve_model(model))
    _check_refine_token_count(source, backend, model, args.max_tokens, args.steps, args.device)

    settings = RefineSettings(instruction=args.instruction, steps=args.steps, guidance=args.guidance,
                              seed=args.seed, loras=args.lora, trigger=args.trigger,
                              layers_as_references=args.layers_as_references)
    engine = RefineEngine(model, backend, args.device, args.lora, load=load_options(args), offload=args.offload,
                          attention_backend=args.attention_backend)
    bar = tqdm(total=args.steps, desc="refining", unit="step", file=sys.stderr, leave=False)
    try:
        image = engine(source, settings, callback=lambda event: bar.update(1))
    finally:
        bar.close()
    from .refine import KLEIN_LAYOUT_NOTE, LAYOUT_NOTE

    note = KLEIN_LAYOUT_NOTE if backend == "klein" else LAYOUT_NOTE
    text = instruction_text(settings, note) if backend in ("kontext", "klein", "qwen") \
        else (args.instruction or "(canvas prompt)")
    _save_image(image, output, metadata={"engine": "refine", "backend": backend, "model": model,
                                         "instruction": text, "seed": args.seed, "steps": args.steps})
    print(f"wrote {output} ({image.width}x{image.height}, refine/{backend}: {text!r})", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.token is not None and not args.token.strip():
        raise LayerComposerError("--token: must not be empty (leave it out for no token)")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise LayerComposerError(f"--max-tokens: must be at least 1, got {args.max_tokens}")
    model = args.model or default_model()
    check_model_name(model)
    if args.refine_model:
        check_model_name(args.refine_model)
    import uvicorn

    from .server.app import DEFAULT_MAX_TOKENS, ServerSettings, create_app, uvicorn_config

    if not 1 <= args.port <= 65535:
        raise LayerComposerError(f"--port: must be 1..65535, got {args.port}")
    if args.queue < 1:
        raise LayerComposerError(f"--queue: must be at least 1, got {args.queue}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"layercomposer: warning: listening on {args.host}: other machines can reach this editor"
              + ("" if args.token else " and there is no --token"), file=sys.stderr)
    from .models.registry import shipped_models

    refine_model = args.refine_model or ("demo-collage" if "demo-collage" in shipped_models() else None)
    settings = ServerSettings(model=model, outputs=Path(args.outputs), token=args.token, max_queue=args.queue,
                              device=args.device, refine_model=refine_model, allowed_hosts=tuple(args.allow_host),
                              max_tokens=args.max_tokens or DEFAULT_MAX_TOKENS)
    load = load_options(args)
    loader = None
    if load.active or args.offload != "none" or args.attention_backend:
        # The editor's model with the low-memory flags (its refine model loads as before).
        def loader() -> Any:
            return _load_pipeline(model, args.device, "auto", args.offload, False, load, args.attention_backend)

    print(f"layercomposer editor: http://{args.host}:{args.port}/  (model {model}, outputs {args.outputs})",
          file=sys.stderr)
    uvicorn.Server(uvicorn_config(create_app(settings, load_pipeline=loader), args.host, args.port)).run()
    return 0


def cmd_eval_examples(args: argparse.Namespace) -> int:
    from .eval.sprites import examples_figure

    out = examples_figure(args.model or default_model(), Path(args.examples), Path(args.out), args.steps,
                          collage_model=args.collage_model, strength=args.strength)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_eval_identifier(args: argparse.Namespace) -> int:
    from .eval.identity import IdentifierConfig, train_identifier

    identifier = train_identifier(IdentifierConfig(seed=args.seed),
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {identifier.save(args.out)}", file=sys.stderr)
    return 0


def cmd_eval_sprites(args: argparse.Namespace) -> int:
    from .eval.sprites import occlusion_markdown, results_markdown, run_eval, save_report

    if not 1 <= args.scenes <= 10_000:
        raise LayerComposerError(f"--scenes: must be between 1 and 10000, got {args.scenes}")
    if args.occlusion_subset != "unlocked" and not args.occlusion_only:
        raise LayerComposerError("--occlusion-subset: only with --occlusion-only (a full run reports every subset)")
    report = run_eval(args.model or default_model(), args.collage_model, args.data, args.scenes, args.steps,
                      args.guidance, Path(args.figures) if args.figures else None, hard_lock=args.hard_lock,
                      strength=args.strength, occlusion_only=args.occlusion_only,
                      occlusion_subset=args.occlusion_subset,
                      identifier=None if args.identifier == "none" else args.identifier,
                      ablations=args.ablations)
    if args.json:
        save_report(report, Path(args.json))
    if args.results:
        command = "layercomposer " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("layercomposer") else \
            "layercomposer eval sprites ..."
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        page = occlusion_markdown if args.occlusion_only else results_markdown
        Path(args.results).write_text(page(report, command, args.machine))
    print(json.dumps(report["summary"], indent=2))
    return 0


def cmd_eval_photos(args: argparse.Namespace) -> int:
    from .photo.evaluate import EvalOptions, evaluate_photos, parse_engines

    options = EvalOptions(
        engines=parse_engines(args.engines), model=args.model, kontext_model=args.kontext_model,
        qwen_model=args.qwen_model, collage_model=args.collage_model, steps=args.steps, seed=args.seed,
        guidance=args.guidance, device=args.device, hard_lock=args.hard_lock, lock=args.lock,
        instruction=args.instruction, embedder=args.embedder, arcface_dir=args.arcface_dir,
        clip_model=args.clip_model, vqa_model=args.vqa_model, hps_checkpoint=args.hps_checkpoint,
    )
    report = evaluate_photos(args.canvases, args.out, options,
                             log=lambda line: print(f"layercomposer: {line}", file=sys.stderr))
    ran = [n for n, r in report["engines"].items() if r["status"] == "ok"]
    print(f"wrote {Path(args.out) / 'table.md'} ({report['canvases']} canvases, engines {', '.join(ran)}; "
          f"identity by {report['embedder']})", file=sys.stderr)
    return 0


def cmd_eval_study(args: argparse.Namespace) -> int:
    from .photo.study import build_study

    items = build_study(args.results, args.output, seed=args.seed, link=args.link, title=args.title)
    print(f"wrote {args.output} ({len(items)} canvases)", file=sys.stderr)
    return 0


def cmd_eval_study_summary(args: argparse.Namespace) -> int:
    from .photo.study import format_summary, summarise_choices

    summary = summarise_choices(args.choices)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_cutout(args: argparse.Namespace) -> int:
    from .photo.cutout import cutout, load_photo, parse_box

    output = _check_output(args.output)
    box_text = args.box
    if box_text is not None:
        parse_box(box_text)  # syntax first, before reading the photo
    photo = load_photo(args.photo)
    box = parse_box(box_text, photo.size) if box_text is not None else None
    result = cutout(photo, box=box)
    x0, y0, x1, y1 = result.box
    _save_image(result.layer, output, metadata={"source": str(args.photo), "box": [x0, y0, x1, y1],
                                                "method": result.method})
    print(f"wrote {output} ({result.layer.width}x{result.layer.height}, at {x0},{y0} in the "
          f"{photo.width}x{photo.height} photo; {result.method})", file=sys.stderr)
    return 0


def cmd_scenes_build(args: argparse.Namespace) -> int:
    from .photo.scenes import BuildOptions, build_scenes

    options = BuildOptions(max_people=args.max_people, min_face=args.min_face, max_side=args.max_side,
                           min_score=args.min_score, template=args.template, embedder=args.embedder,
                           overwrite=args.overwrite)
    report = build_scenes(args.photos, args.output, options,
                          warn=lambda line: print(f"layercomposer: {line}", file=sys.stderr))
    print(f"wrote {len(report.scenes)} scenes ({report.images} images, {len(report.skipped)} photos skipped) to "
          f"{args.output}; identities by {report.embedder}", file=sys.stderr)
    return 0


def cmd_photos_canvases(args: argparse.Namespace) -> int:
    from .photo.canvases import benchmark_canvas
    from .photo.cutout import load_photo

    output = Path(args.output)
    if output.suffix.lower() not in (".json", ".lcz"):
        raise LayerComposerError(f"--output {args.output}: must be a .json canvas or a .lcz bundle")
    if output.parent != Path() and not output.parent.is_dir():
        raise LayerComposerError(f"--output {args.output}: folder {output.parent} does not exist")
    collage = _check_output(args.collage) if args.collage else None
    save_prior = _check_output(args.save_prior) if args.save_prior else None
    identities = [load_photo(p) for p in args.identity]  # bad photos fail before a (slow) prior model loads
    if args.prior_model:
        if not args.prompt:
            raise LayerComposerError("--prior-model: the prior is made from --prompt; give one")
        settings = _prior_settings(args, None, None)
        prior = _load_prior_model(args)(args.prompt, settings)
        if save_prior is not None:
            _save_image(prior, save_prior, metadata={"prompt": args.prompt, "model": args.prior_model,
                                                     "seed": settings.seed, "steps": settings.steps})
    else:
        prior = load_photo(args.prior)
    names = [Path(p).stem or f"identity{i}" for i, p in enumerate(args.identity)]
    if len(set(names)) != len(names):
        names = [f"identity{i}" for i in range(len(names))]
    canvas = benchmark_canvas(prior, identities, prompt=args.prompt, names=names, with_prior=args.with_prior)
    canvas.save(output)
    if collage is not None:
        _save_image(canvas.flatten(), collage, metadata={"canvas": str(output)})
    how = ", ".join(f"{layer.name}: {layer.meta.get('aligned_by')}" for layer in canvas.layers if layer.meta)
    print(f"wrote {output} ({canvas.width}x{canvas.height}, {len(identities)} identities placed; {how})",
          file=sys.stderr)
    return 0


def cmd_photos_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .photo.batch import load_batch_spec, run_batch

    spec = load_batch_spec(args.spec)
    settings = _prior_settings(args, spec.width, spec.height)
    if spec.needs_prior_model and not args.prior_model:
        missing = [item.name for item in spec.items if item.prior is None]
        raise LayerComposerError(f"{args.spec}: {len(missing)} item(s) without a prior ({missing[0]}, ...): give "
                                 "each a prior image, or --prior-model")
    prior_model = _load_prior_model(args) if spec.needs_prior_model else None
    bar = tqdm(total=len(spec.items), desc="canvases", unit="canvas", file=sys.stderr, dynamic_ncols=True)

    def on_item(name: str, status: str) -> None:
        bar.update(1)
        if status != "written":
            bar.write(f"layercomposer: {name}: {status}", file=sys.stderr)

    try:
        report = run_batch(spec, args.output, prior_model, settings, overwrite=args.overwrite, on_item=on_item)
    finally:
        bar.close()
    print(f"wrote {len(report.written)} canvases to {args.output} ({len(report.skipped)} already there, "
          f"{len(report.failed)} failed)", file=sys.stderr)
    return EXIT_BAD_INPUT if report.failed else 0


def _prior_settings(args: argparse.Namespace, width: int | None, height: int | None) -> Any:
    from .photo.prior import PriorSettings, fit_prior_size

    if not 1 <= args.prior_steps <= 1000:
        raise LayerComposerError(f"--prior-steps: must be between 1 and 1000, got {args.prior_steps}")
    if args.prior_size:
        match = re.fullmatch(r"(\d+)x(\d+)", args.prior_size)
        if not match:
            raise LayerComposerError(f"--prior-size: WIDTHxHEIGHT in pixels, got {args.prior_size!r}")
        width, height = int(match[1]), int(match[2])
    w, h = fit_prior_size(width, height)
    return PriorSettings(steps=args.prior_steps, guidance=args.prior_guidance, seed=args.seed, width=w, height=h)


def _load_prior_model(args: argparse.Namespace) -> Any:
    from diffusers.utils import logging as diffusers_logging

    from .photo.prior import PriorModel

    diffusers_logging.disable_progress_bar()  # loading bars; the sampling bar stays (desc "prior")
    print(f"layercomposer: loading prior model {args.prior_model}", file=sys.stderr)
    return PriorModel(args.prior_model, device=args.device, dtype=args.dtype)


# ----------------------------------------------------------------------------------------------------------
# Helpers


def _load_pipeline(model: str, device: str | None, dtype: str = "auto", offload: str = "none",
                   vae_tiling: bool = False, load: Any = None, attention_backend: str | None = None) -> Any:
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from .pipeline import LayerComposerPipeline

    # Loading progress bars of the libraries are noise next to our own.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise LayerComposerError(f"--device: unknown device {device!r}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise LayerComposerError("--device: CUDA is not available on this machine")
    from .modelcheck import check_model

    check_model(model)  # absurd or non-finite config numbers, before anything is allocated from them
    pipe = LayerComposerPipeline.from_pretrained(model, load=load)
    torch_dtype = (torch.bfloat16 if torch_device.type == "cuda" else torch.float32) if dtype == "auto" \
        else getattr(torch, dtype)
    if offload == "none":
        if torch_device.type != "cpu" or torch_dtype != torch.float32:
            pipe.to(torch_device, torch_dtype)
    else:
        pipe.to("cpu", torch_dtype)
        if offload == "model":
            pipe.enable_model_cpu_offload(torch_device)
        elif offload == "group":
            pipe.enable_group_offload(torch_device)
        else:
            pipe.enable_sequential_cpu_offload(torch_device)
    from .models.lowmem import set_attention_backend

    set_attention_backend(pipe.transformer, attention_backend)
    if vae_tiling:
        pipe.enable_vae_tiling()
    return pipe


def _check_output(path_str: str) -> Path:
    """The output path, checked before any work: extension, folder, and that the folder takes a new file
    (a read-only folder or file system is reported now, not after generating)."""
    path = Path(path_str)
    if path.suffix.lower() not in _IMAGE_FORMATS:
        raise LayerComposerError(
            f"--output {path_str}: unknown image extension (use {', '.join(sorted(_IMAGE_FORMATS))})"
        )
    if path.is_dir():
        raise LayerComposerError(f"--output {path_str}: is a directory")
    if path.parent != Path() and not path.parent.is_dir():
        raise LayerComposerError(f"--output {path_str}: folder {path.parent} does not exist")
    folder = Path(os.path.realpath(path)).parent
    try:  # what writing will do: a temporary file in that folder (os.access misleads root and read-only mounts)
        fd, probe = tempfile.mkstemp(prefix=".layercomposer-probe.", suffix=".part", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LayerComposerError(f"--output {path_str}: cannot write in {folder} ({exc.strerror or exc})") from None
    return path


def _check_token_count(canvas: Any, model: str, mode: str, limit: int, steps: int | None = None,
                       device: str | None = None, dtype: str = "auto") -> None:
    """Refuse a canvas whose token count (noisy + condition, as `model` counts) is above `limit`, in one line,
    before the model is loaded: time and memory of sampling grow with it."""
    _check_limit(limit)
    from .conditioning import ConditioningBuilder
    from .models.registry import token_rules

    plan = ConditioningBuilder(max_entries=0, rules=token_rules(model)).plan(canvas, mode)
    w, h = canvas.generation_size
    _refuse_above(plan.total + plan.noisy, f"{plan.noisy} noisy for {w}x{h} px + {plan.total} condition, {mode}",
                  "canvas", model, limit, steps, device, dtype)


def _check_refine_token_count(source: Any, backend: str, model: str, limit: int, steps: int,
                              device: str | None) -> None:
    """`_check_token_count` for `refine`: the demo backend counts a canvas as the collage mode does; the other
    backends get the flattened collage whole, one token per 16x16 px, next to as many noisy tokens (the
    reference images of --layers-as-references are not counted)."""
    _check_limit(limit)
    from .canvas import Canvas

    if backend == "demo":
        from .refine import _image_canvas

        canvas = source if isinstance(source, Canvas) else _image_canvas(source.convert("RGB"))
        _check_token_count(canvas, model, "collage", limit, steps, device)
        return
    w, h = source.generation_size if isinstance(source, Canvas) else source.size
    grid = (w // 16) * (h // 16)
    _refuse_above(2 * grid, f"{grid} noisy for {w // 16 * 16}x{h // 16 * 16} px + {grid} of the collage",
                  "canvas" if isinstance(source, Canvas) else "image", model, limit, steps, device, "auto")


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise LayerComposerError(f"--max-tokens: must be at least 1, got {limit}")


def _refuse_above(total: int, what: str, name: str, model: str, limit: int, steps: int | None,
                  device: str | None, dtype: str) -> None:
    if total <= limit:
        return
    from .models.cost import DEFAULT_STEPS, estimate_attention

    cpu = _runs_on_cpu(device)
    width = 4 if dtype == "float32" or (dtype == "auto" and cpu) else 2
    estimate = estimate_attention(total, model, bytes_per_element=width, cpu=cpu)
    raise LayerComposerError(
        f"{name}: {total} tokens ({what}) is above --max-tokens {limit}: {estimate.describe(steps or DEFAULT_STEPS)};"
        " make the canvas smaller or raise --max-tokens")


def _runs_on_cpu(device: str | None) -> bool:
    """Whether a command's --device means the CPU (no device: the CPU unless CUDA is available)."""
    if device is not None:
        return device.split(":")[0] == "cpu"
    import torch

    return not torch.cuda.is_available()


def _save_image(image: Any, path: Path, metadata: dict[str, Any]) -> None:
    """Encode fully in memory, then write atomically: a failure leaves no partial file."""
    from PIL import PngImagePlugin

    from .canvas import write_atomic

    fmt = _IMAGE_FORMATS[path.suffix.lower()]
    buf = io.BytesIO()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("layercomposer", json.dumps(metadata))
        image.save(buf, format="PNG", pnginfo=info)
    else:
        if image.mode == "RGBA":  # no alpha in JPEG; composite over white like an image editor's export
            from PIL import Image

            base = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(base, image)
        image.convert("RGB").save(buf, format=fmt, quality=95)
    try:
        write_atomic(path, buf.getvalue())
    except OSError as exc:
        raise LayerComposerError(f"--output {path}: cannot write ({exc.strerror or exc})") from None


if __name__ == "__main__":
    console()
