"""Running the engines on the sprites evaluation's cases: one case's pictures and metrics (`evaluate_case`), and
the whole run (`run_eval`) that builds the cases, runs the models and writes the report's JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...canvas import Canvas
from ...data.scenes import BACKGROUND, SceneSet
from ...errors import LayerComposerError
from ..identity import MIN_VISIBLE_PIXELS
from ..metrics import locate, psnr, ssim
from .cases import (
    EVAL_SEED,
    MIN_REVEALED_PIXELS,
    OCCLUSION_SCENES_PER_CASE,
    SUBSET_KEY,
    SpriteCase,
    build_cases,
    copy_probe_canvas,
    flip_lock,
    paste,
)
from .figures import canvas_preview, figure_grid
from .summary import summarise

if TYPE_CHECKING:
    from ...pipeline import LayerComposerPipeline
    from ..identity import Identifier


def _generate(pipe: LayerComposerPipeline, canvas: Canvas, mode: str, steps: int, seed: int, guidance: float | None,
              hard_lock: bool = False, strength: float = 1.0) -> tuple[Any, float]:
    result = pipe.generate(canvas, num_inference_steps=steps, seed=seed, mode=mode, guidance_scale=guidance,
                           hard_lock=hard_lock, strength=strength)
    return result, result.seconds["sample"] / steps if steps else math.nan


def vae_reconstruction(pipe: LayerComposerPipeline, image: Image.Image) -> Image.Image:
    """T through the model's VAE and back: the ceiling of any latent model on these pixels."""
    import torch

    from ...conditioning import picture_pixels

    with torch.no_grad():
        tokens = pipe._encode_pixels(picture_pixels(image))
    w, h = image.size
    return pipe.decode(tokens, (h // 16, w // 16))


def evaluate_case(case: SpriteCase, pipe: LayerComposerPipeline, collage_pipe: LayerComposerPipeline | None,
                  steps: int, guidance: float | None, hard_lock: bool = True, strength: float | None = None,
                  ablations: bool = True, identifier: Identifier | None = None,
                  ) -> tuple[dict[str, Any], dict[str, Image.Image]]:
    """Metrics of one case, and the pictures made for it (`hard_lock`: also the layered model hard-locked;
    `strength`: also the layered model image-to-image from the flattened canvas at that strength;
    `ablations=False` skips the unpruned run, the lock flip and the copy probe, three samplings a case;
    `identifier`: an `eval.identity.Identifier`, for the identity of unlocked characters)."""
    from ...world import classify_background, classify_lighting

    sample, seed = case.sample, 1000 + case.index
    target = sample.target
    pics: dict[str, Image.Image] = {"target": target, "paste": paste(sample.canvas),
                                    "vae": vae_reconstruction(pipe, target)}
    layered, s_layered = _generate(pipe, sample.canvas, "layered", steps, seed, guidance)
    pics["layered"] = layered.image
    unpruned, s_unpruned = None, math.nan
    if ablations:
        unpruned, s_unpruned = _generate(pipe, sample.canvas, "unpruned", steps, seed, guidance)
        pics["unpruned"] = unpruned.image
    if collage_pipe is not None:
        pics["collage"] = _generate(collage_pipe, sample.canvas, "collage", steps, seed, guidance)[0].image
    if hard_lock:
        pics["hard_lock"] = _generate(pipe, sample.canvas, "layered", steps, seed, guidance, hard_lock=True)[0].image
    if strength is not None:
        pics["strength"] = _generate(pipe, sample.canvas, "layered", steps, seed, guidance,
                                     strength=strength)[0].image
    engines = [k for k in ("layered", "hard_lock", "strength", "unpruned", "collage", "vae", "paste") if k in pics]
    record: dict[str, Any] = {
        "case": case.index, "scene": case.scene.id, "image": sample.image, "background": case.background,
        "locked": sample.locked, "unlocked": sample.unlocked, "dropped": sample.dropped,
        "psnr_image": {k: psnr(pics[k], target) for k in engines},
        "ssim_image": {k: ssim(pics[k], target) for k in engines},
        "tokens": {"layered": layered.plan.total, "noisy": layered.plan.noisy,
                   **({"unpruned": unpruned.plan.total} if unpruned is not None else {})},
        "seconds_per_step": {"layered": s_layered, **({"unpruned": s_unpruned} if unpruned is not None else {})},
    }
    # The collage model on locked regions is the ablation's locked fidelity: it sees the same pixels, flattened,
    # and cannot tell a locked layer from an unlocked one.
    locked_engines = [k for k in ("layered", "hard_lock", "strength", "unpruned", "collage", "vae") if k in pics]
    record["locked_regions"] = []
    for name in sample.locked:
        mask = case.visible[name]
        if not mask.any():
            continue
        away = mask & ~case.near_unlocked
        record["locked_regions"].append({
            "name": name, "pixels": int(mask.sum()), **{k: psnr(pics[k], target, mask) for k in locked_engines},
            "away": {"pixels": int(away.sum()),
                     **({k: psnr(pics[k], target, away) for k in locked_engines} if away.any() else {})},
        })
    scene_image = case.scene.images[sample.image]
    unlocked_regions = []
    for name in sample.unlocked:
        mask = case.visible[name]
        if not mask.any():
            continue
        entry = {"name": name, "pixels": int(mask.sum()),
                 **{k: psnr(pics[k], target, mask) for k in engines if k != "vae"}}
        if name != BACKGROUND:
            box = _mask_box(mask)
            dx, dy = locate(pics["layered"], target, mask, box)
            entry["layout_error_px"] = float(math.hypot(dx, dy))
            if "collage" in pics:
                cdx, cdy = locate(pics["collage"], target, mask, box)
                entry["layout_error_px_collage"] = float(math.hypot(cdx, cdy))
        unlocked_regions.append(entry)
    record["unlocked_regions"] = unlocked_regions
    # The occlusion subset (any layer), and its two parts: unlocked characters ("revealed", the only subset
    # before 2026-12-05) and locked layers.
    for key, revealed in (("revealed", case.revealed_mask), ("revealed_locked", case.revealed_locked_mask),
                          ("revealed_all", case.revealed_all_mask)):
        if revealed.sum() >= MIN_REVEALED_PIXELS:
            record[key] = {"pixels": int(revealed.sum()),
                           **{k: psnr(pics[k], target, revealed) for k in engines if k != "vae"}}
    if case.background != "locked":
        truth_bg = case.scene.extra.get("background")
        truth_light = scene_image.extra.get("lighting")
        record["prompt"] = {k: {"background": classify_background(pics[k]) == truth_bg,
                                "lighting": classify_lighting(pics[k]) == truth_light}
                            for k in ("layered", "strength", "collage") if k in pics}
    # A character can be flipped to unlocked only if another picture of the scene shows it.
    subjects = [n for n in scene_image.subjects if case.visible[n].any()
                and any(n in im.layers and im.index != sample.image for im in case.scene.images)]
    if ablations and subjects:
        # One character locked vs unlocked, everything else as in the case.
        name = subjects[0]
        flipped = _generate(pipe, flip_lock(case, name), "layered", steps, seed, guidance)[0].image
        locked_pic, unlocked_pic = (layered.image, flipped) if name in sample.locked else (flipped, layered.image)
        record["lock_flip"] = {"name": name, "pixels": int(case.visible[name].sum()),
                               "locked": psnr(locked_pic, target, case.visible[name]),
                               "unlocked": psnr(unlocked_pic, target, case.visible[name])}
        pics["locked_" + name], pics["unlocked_" + name] = locked_pic, unlocked_pic
        # The copy probe: the target's own layer of that character, in place, unlocked. A model that uses its
        # unlocked layers keeps it nearly as well as the same layer locked.
        copy_pic = _generate(pipe, copy_probe_canvas(case, name), "layered", steps, seed, guidance)[0].image
        record["copy_probe"] = {"name": name, "pixels": int(case.visible[name].sum()),
                                "locked": record["lock_flip"]["locked"],
                                "copy": psnr(copy_pic, target, case.visible[name])}
        if identifier is not None and identifier.knows(name) and case.visible[name].sum() >= MIN_VISIBLE_PIXELS:
            from ..identity import candidates

            rng = np.random.default_rng([EVAL_SEED, case.index, 7])
            cands = candidates(name, [n for n in case.scene.subjects if n != name], identifier.ids, rng)
            found = identifier.identify_many([(p, case.visible[name], cands) for p in (locked_pic, copy_pic)])
            record["copy_probe"]["identity"] = {"locked": found[0] == name, "copy": found[1] == name}
        pics["copy_" + name] = copy_pic
    if identifier is not None:
        from ..identity import identity_regions

        record["identity"] = identity_regions(case, pics, identifier, layered.plan, seed=EVAL_SEED)
        if ablations and record["identity"]:
            from ...conditioning import subject_cells
            from ..attention import attention_mass

            cells = {r["name"]: subject_cells(case.visible[r["name"]].astype(np.uint8) * 255, sample.canvas.grid)
                     .numpy() for r in record["identity"]}
            mass = attention_mass(pipe, sample.canvas, target, cells, seed=seed)
            record["attention"] = [{**mass[r["name"]], "name": r["name"], "recognised": r["top1"].get("layered")}
                                   for r in record["identity"] if r["name"] in mass]
    return record, pics


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def run_eval(
    model: str, collage_model: str | None, data: str | None, scenes: int, steps: int, guidance: float | None,
    figures: Path | None, figure_rows: int = 6, progress: bool = True, hard_lock: bool = True,
    strength: float | None = None, occlusion_only: bool = False, occlusion_subset: str = "unlocked",
    identifier: str | None = "shipped", ablations: bool = True,
) -> dict[str, Any]:
    """Evaluate on `scenes` held-out cases; returns {"summary", "cases", "settings"}.

    `occlusion_only`: `scenes` cases of the occlusion subset only (the scenes scanned in order as in a full run,
    the others skipped), each with the layered and the collage model and no other ablation; for an ordering of
    the two models on that subset with a small standard error. `occlusion_subset`: which subset ("unlocked":
    unlocked characters' hidden pixels; "all": any layer's). `identifier`: the identity metric's weights
    ("shipped": the package's; None: no identity metric). `ablations=False` skips the unpruned run, the lock
    flip and the copy probe (a quick proxy evaluation)."""
    import sys
    import tempfile

    from tqdm import tqdm

    from ...pipeline import LayerComposerPipeline, skipped_steps
    from ...world import generate_dataset

    if strength is not None:
        skipped_steps(steps, strength)  # a bad strength fails before the models load
    if occlusion_only and collage_model is None:
        raise LayerComposerError("the occlusion-only evaluation compares with a collage model: give --collage-model")
    ident = None
    if identifier is not None:
        from ..identity import IDENTIFIER_DIR, Identifier

        ident = Identifier.load(IDENTIFIER_DIR if identifier == "shipped" else identifier)
    pipe = LayerComposerPipeline.from_pretrained(model)
    collage_pipe = LayerComposerPipeline.from_pretrained(collage_model) if collage_model else None
    with tempfile.TemporaryDirectory() as tmp:
        root = data
        if root is None:
            # Enough held-out scenes for `scenes` cases (a few have one picture only; OCCLUSION_SCENES_PER_CASE
            # says how many canvases enter each occlusion subset).
            factor = OCCLUSION_SCENES_PER_CASE[occlusion_subset] if occlusion_only else 1.25
            generate_dataset(tmp, int(scenes * factor) + 5, seed=EVAL_SEED, size=256, split="heldout")
            root = tmp
        cases = build_cases(SceneSet.load(root), scenes, occlusion_only=occlusion_only,
                            occlusion_subset=occlusion_subset)
        if occlusion_only and len(cases) < scenes:
            print(f"layercomposer: only {len(cases)} of the {scenes} occlusion cases asked for in {root}; "
                  "evaluating those (generate more held-out scenes for more)", file=sys.stderr)
        records, fig_rows, occl_rows = [], [], []
        for case in tqdm(cases, desc="eval", unit="case", file=sys.stderr, disable=not progress):
            record, pics = evaluate_case(case, pipe, collage_pipe, steps, guidance, hard_lock, strength,
                                         ablations=ablations and not occlusion_only, identifier=ident)
            records.append(record)
            row = [canvas_preview(case.sample.canvas), pics.get("collage", pics["paste"]), pics["layered"],
                   *([pics["hard_lock"]] if hard_lock else []), *([pics["strength"]] if strength else []),
                   pics["target"]]
            if len(fig_rows) < figure_rows and not occlusion_only:
                fig_rows.append(row)
            if (SUBSET_KEY[occlusion_subset] if occlusion_only else "revealed_all") in record \
                    and len(occl_rows) < figure_rows:
                occl_rows.append(row)
    settings = {"model": model, "collage_model": collage_model, "scenes": scenes, "steps": steps,
                "guidance": guidance if guidance is not None else pipe.guidance_scale, "eval_seed": EVAL_SEED,
                "hard_lock": hard_lock, "strength": strength, "occlusion_only": occlusion_only,
                "identifier": identifier, "ablations": ablations,
                **({"occlusion_subset": occlusion_subset} if occlusion_only else {})}
    report = {"settings": settings, "summary": summarise(records), "cases": records}
    if figures is not None:
        second = "collage model" if collage_pipe is not None else "pasted"
        header = ["canvas (green locked)", second, "layered model", *(["+ hard lock"] if hard_lock else []),
                  *([f"strength {strength:g}"] if strength else []), "target"]
        # The occlusion-only run writes its own file, so that it never replaces a full run's figures.
        report["figures"] = [
            str(figure_grid(fig_rows, header, figures / "sprites_grid.png")) if fig_rows else None,
            str(figure_grid(occl_rows, header, figures / (_occlusion_figure(occlusion_subset) if occlusion_only else
                                                          "sprites_occlusion.png"))) if occl_rows else None,
        ]
    return report


def _occlusion_figure(subset: str) -> str:
    return "occlusion_only.png" if subset == "unlocked" else f"occlusion_only_{subset}.png"


def save_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float) + "\n")
