"""Evaluation in the sprites world, where the true target of every canvas is known (docs/DESIGN.md sections 5, 7).

    layercomposer eval sprites --model demo --collage-model demo-collage --scenes 100 --json out.json

Test canvases come from held-out scenes (identities never seen in training) through the training sampler
with its jitter switched off: a target picture T, a seeded random subset of its layers locked (T's own
pixels), the other characters cut from another picture of the scene and placed over T's characters, the
background locked, unlocked or left out. Measured against T:

- locked fidelity: PSNR inside each locked layer's visible region, beside the VAE's own reconstruction of T
  on the same pixels (the ceiling: the model works in that VAE's latent space); again on the part of it
  more than AWAY_PX from any unlocked character (in T or on the canvas), which separates copying the locked
  layer from the unlocked characters' redrawing spilling onto it;
- adaptation: PSNR inside each unlocked character's visible region, beside naive pasting (the flattened
  canvas itself, what a collage without a model gives);
- whole-image PSNR and SSIM; layout (where each unlocked character was drawn, by template matching against
  T, in px); prompt adherence (background and lighting classified from the picture, when not locked);
- ablations: the collage-conditioned model on the same canvases (on locked regions too: what locking is for),
  with the occlusion subset (pixels of a layer that T shows but that another layer covers in the collage),
  split into the pixels of unlocked characters (which both models must redraw) and of locked layers (which
  the layered canvas still holds under the unlocked layer in front and the collage has lost); one character
  locked vs unlocked; pruned vs unpruned conditioning (quality, tokens, seconds per step).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..canvas import Canvas, Layer, LayerImage
from ..data.canvas_sampling import SamplingConfig, TrainingSample, alpha_box, place_unlocked, sample_training_canvas
from ..data.scenes import BACKGROUND, Scene, SceneSet
from ..errors import LayerComposerError
from .identity import MIN_VISIBLE_PIXELS
from .metrics import locate, psnr, ssim

EVAL_SEED = 1
"""Held-out scenes of the evaluation: `layercomposer world generate --split heldout --seed 1`."""

EVAL_SAMPLING = SamplingConfig(
    p_lock_none=0.2, p_lock_all=0.1, p_lock_each=0.5, p_drop_background=0.35,
    scale_jitter=0.0, shift_jitter=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue_degrees=0.0,
)
MIN_REVEALED_PIXELS = 30
"""A case enters an occlusion subset when T shows at least this many of its pixels that the collage hides."""
IDENTITY_TARGET = 0.60
"""Unlocked identity the layered model must reach (top-1 among the gallery), and its margin over the collage model."""
IDENTITY_MARGIN = 0.10
AWAY_PX = 12
"""Locked pixels count as away from the unlocked characters when none is within this many pixels (square)."""
OCCLUSION_SCENES_PER_CASE = {"unlocked": 5, "all": 2}
"""Held-out scenes generated per case asked for by an occlusion-only run without --data (about one canvas in
four shows hidden pixels of an unlocked character, seven in ten hidden pixels of any layer)."""
OCCLUSION_SUBSETS = ("unlocked", "all")
"""What an occlusion-only run selects by: unlocked characters' hidden pixels, or any layer's."""
_SUBSET_KEY = {"unlocked": "revealed", "all": "revealed_all"}


@dataclass
class Case:
    """One test canvas, its target, and the masks the metrics need."""

    index: int
    scene: Scene
    sample: TrainingSample
    visible: dict[str, np.ndarray]
    """Layer name -> (H, W) bool: where that layer is what T shows (alpha > 0.5, nothing in front)."""
    revealed: dict[str, np.ndarray]
    """Canvas layer -> pixels of it that T shows but that later layers cover in the canvas's collage."""
    near_unlocked: np.ndarray
    """(H, W) bool: within AWAY_PX of a pixel where T or the canvas shows an unlocked character."""

    def _revealed(self, names: list[str] | None) -> np.ndarray:
        out = np.zeros(self.sample.target.size[::-1], bool)
        for name, mask in self.revealed.items():
            if names is None or name in names:
                out |= mask
        return out

    @property
    def revealed_mask(self) -> np.ndarray:
        """The pixels of unlocked characters that T shows and the collage hides (the occlusion subset's first
        part; the only one before 2026-12-05, and the one `--occlusion-only` selects by)."""
        return self._revealed([n for n in self.sample.unlocked if n != BACKGROUND])

    @property
    def revealed_locked_mask(self) -> np.ndarray:
        """The pixels of locked layers that T shows and the collage hides under an unlocked layer."""
        return self._revealed(self.sample.locked)

    @property
    def revealed_all_mask(self) -> np.ndarray:
        """Every pixel that T shows and the collage hides, whatever its layer (the occlusion subset)."""
        return self._revealed(None)

    @property
    def revealed_pixels(self) -> int:
        return int(self.revealed_mask.sum())

    @property
    def background(self) -> str:
        s = self.sample
        if BACKGROUND in s.locked:
            return "locked"
        return "unlocked" if BACKGROUND in s.unlocked else "none"


def _alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.getchannel("A")) > 127


def visible_masks(scene_image) -> dict[str, np.ndarray]:
    """Per layer of a scene picture, the pixels where it is the front-most layer."""
    order = list(scene_image.order)
    alphas = {name: _alpha(scene_image.layer(name)) for name in order}
    out, covered = {}, np.zeros_like(next(iter(alphas.values())))
    for name in reversed(order):  # front to back
        out[name] = alphas[name] & ~covered
        covered |= alphas[name]
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of a True pixel of `mask`, counting diagonal steps as one (a square window)."""
    if radius <= 0:
        return mask.copy()
    out = mask
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        out = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis).any(axis=-1)
    return out


def canvas_alphas(canvas: Canvas) -> dict[str, np.ndarray]:
    """Each visible canvas layer's (H, W) bool alpha > 0.5, in z-order (back to front)."""
    return {layer.name: _alpha(canvas.render_layer(layer)) for layer in canvas.visible_layers()}


def near_unlocked_mask(renders: dict[str, np.ndarray], visible: dict[str, np.ndarray], unlocked: list[str],
                       radius: int = AWAY_PX) -> np.ndarray:
    """Pixels within `radius` of an unlocked character, where T shows it or where the canvas (`canvas_alphas`)
    places it."""
    shape = next(iter(visible.values())).shape
    where = np.zeros(shape, bool)
    for name, alpha in renders.items():
        if name in unlocked and name != BACKGROUND:
            where |= alpha
            where |= visible.get(name, np.zeros(shape, bool))
    return dilate(where, radius)


def revealed_masks(renders: dict[str, np.ndarray], visible: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each layer of the canvas (`canvas_alphas`): visible in T, inside its own canvas layer, but covered
    by a later layer.

    A locked layer is T's own, so a later layer that covers it in the canvas but not in T is an unlocked
    one, placed where T does not have that character (another pose)."""
    names = list(renders)
    out = {}
    for name in names:
        if name not in visible:
            continue
        later = names[names.index(name) + 1:]
        cover = np.zeros_like(renders[name])
        for other in later:
            cover |= renders[other]
        out[name] = visible[name] & renders[name] & cover
    return out


def build_cases(scenes: SceneSet, count: int, seed: int = EVAL_SEED, occlusion_only: bool = False,
                occlusion_subset: str = "unlocked") -> list[Case]:
    """`count` test canvases from scenes with at least two pictures, one per scene in order.

    `occlusion_only` keeps only the canvases that enter an occlusion subset (at least MIN_REVEALED_PIXELS that
    T shows and the collage hides): of unlocked characters (`occlusion_subset="unlocked"`) or of any layer
    (`"all"`). A case keeps the index (and so the canvas and the sampling seed) it has in the full run: the
    occlusion subset of a full run on the same scenes is the start of this one."""
    if occlusion_subset not in OCCLUSION_SUBSETS:
        raise LayerComposerError(f"occlusion subset: one of {', '.join(OCCLUSION_SUBSETS)}, got {occlusion_subset!r}")
    cases = []
    candidates = 0
    for scene in scenes.scenes:
        if len(cases) == count:
            break
        if len(scene.images) < 2:
            continue
        rng = np.random.default_rng([seed, candidates])
        sample = sample_training_canvas(scene, rng, EVAL_SAMPLING)
        visible = visible_masks(scene.images[sample.image])
        renders = canvas_alphas(sample.canvas)  # rendered once for both masks
        case = Case(candidates, scene, sample, visible, revealed_masks(renders, visible),
                    near_unlocked_mask(renders, visible, sample.unlocked))
        candidates += 1
        revealed = case.revealed_mask if occlusion_subset == "unlocked" else case.revealed_all_mask
        if not occlusion_only or revealed.sum() >= MIN_REVEALED_PIXELS:
            cases.append(case)
    return cases


def flip_lock(case: Case, name: str) -> Canvas:
    """The case's canvas with character `name` switched between locked (T's own) and unlocked (other picture)."""
    sample = case.sample
    target = case.scene.images[sample.image]
    canvas = sample.canvas.copy()
    i = next(k for k, layer in enumerate(canvas.layers) if layer.name == name)
    if canvas.layers[i].locked:
        others = [im for im in case.scene.images if name in im.layers and im.index != sample.image]
        layer = place_unlocked(name, target, others[0], np.random.default_rng(0), EVAL_SAMPLING)
    else:
        full = target.layer(name)
        box = alpha_box(full)
        layer = Layer(name=name, image=LayerImage.from_pil(full.crop(box)), x=box[0], y=box[1], locked=True)
    canvas.layers[i] = layer
    return canvas


def paste(canvas: Canvas) -> Image.Image:
    """Naive pasting: the flattened canvas over the conditioning fill grey (what no model gives)."""
    base = Image.new("RGBA", canvas.generation_size, (128, 128, 128, 255))
    return Image.alpha_composite(base, canvas.flatten(canvas.generation_size)).convert("RGB")


# ----------------------------------------------------------------------------------------------------------
# Running


def _generate(pipe, canvas: Canvas, mode: str, steps: int, seed: int, guidance: float | None,
              hard_lock: bool = False, strength: float = 1.0) -> tuple[Any, float]:
    result = pipe.generate(canvas, num_inference_steps=steps, seed=seed, mode=mode, guidance_scale=guidance,
                           hard_lock=hard_lock, strength=strength)
    return result, result.seconds["sample"] / steps if steps else math.nan


def vae_reconstruction(pipe, image: Image.Image) -> Image.Image:
    """T through the model's VAE and back: the ceiling of any latent model on these pixels."""
    import torch

    from ..training.batch import picture_pixels

    with torch.no_grad():
        tokens = pipe._encode_pixels(picture_pixels(image))
    w, h = image.size
    return pipe.decode(tokens, (h // 16, w // 16))


def evaluate_case(case: Case, pipe, collage_pipe, steps: int, guidance: float | None,
                  hard_lock: bool = True, strength: float | None = None, ablations: bool = True,
                  identifier=None) -> tuple[dict, dict]:
    """Metrics of one case, and the pictures made for it (`hard_lock`: also the layered model hard-locked;
    `strength`: also the layered model image-to-image from the flattened canvas at that strength;
    `ablations=False` skips the unpruned run, the lock flip and the copy probe, three samplings a case;
    `identifier`: an `eval.identity.Identifier`, for the identity of unlocked characters)."""
    from ..world import classify_background, classify_lighting

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
            from .identity import candidates

            rng = np.random.default_rng([EVAL_SEED, case.index, 7])
            cands = candidates(name, [n for n in case.scene.subjects if n != name], identifier.ids, rng)
            found = identifier.identify_many([(p, case.visible[name], cands) for p in (locked_pic, copy_pic)])
            record["copy_probe"]["identity"] = {"locked": found[0] == name, "copy": found[1] == name}
        pics["copy_" + name] = copy_pic
    if identifier is not None:
        from .identity import identity_regions

        record["identity"] = identity_regions(case, pics, identifier, layered.plan, seed=EVAL_SEED)
        if ablations and record["identity"]:
            from ..training.batch import subject_cells
            from .attention import attention_mass

            cells = {r["name"]: subject_cells(case.visible[r["name"]].astype(np.uint8) * 255, sample.canvas.grid)
                     .numpy() for r in record["identity"]}
            mass = attention_mass(pipe, sample.canvas, target, cells, seed=seed)
            record["attention"] = [{**mass[r["name"]], "name": r["name"], "recognised": r["top1"].get("layered")}
                                   for r in record["identity"] if r["name"] in mass]
    return record, pics


def copy_probe_canvas(case: Case, name: str) -> Canvas:
    """The case's canvas with character `name` as the target's own layer, in place (its alpha box, scale 1),
    unlocked, colours untouched: what a model that copies its unlocked layers keeps exactly."""
    target = case.scene.images[case.sample.image]
    canvas = case.sample.canvas.copy()
    i = next(k for k, layer in enumerate(canvas.layers) if layer.name == name)
    full = target.layer(name)
    box = alpha_box(full)
    canvas.layers[i] = Layer(name=name, image=LayerImage.from_pil(full.crop(box)), x=box[0], y=box[1], locked=False)
    return canvas


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def paired_difference(a: list[float | None], b: list[float | None]) -> dict[str, Any]:
    """Mean of a - b over the pairs where both are finite, its standard error (sample standard deviation over
    sqrt(n); None below two pairs) and in how many pairs a is above b."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True)
             if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return {"difference": None, "difference_se": None, "better": 0, "pairs": 0}
    d = np.array([x - y for x, y in pairs], dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None
    return {"difference": float(d.mean()), "difference_se": se, "better": int((d > 0).sum()), "pairs": len(d)}


def _away(regions: list[dict]) -> dict[str, Any]:
    """Locked regions restricted to their pixels away from unlocked characters (reports before this have none)."""
    parts = [r["away"] for r in regions if "away" in r]
    kept = [a for a in parts if "layered" in a]
    return {"regions": len(kept), "psnr": _mean([a["layered"] for a in kept]),
            "psnr_collage": _mean([a.get("collage") for a in kept]), "vae_ceiling": _mean([a["vae"] for a in kept]),
            "pixel_share": (sum(a["pixels"] for a in parts) / sum(r["pixels"] for r in regions if "away" in r)
                            if parts else None)}


def _occlusion(records: list[dict], key: str) -> dict[str, Any]:
    """One occlusion subset's means over its cases, and the layered minus collage paired difference."""
    occl = [rec[key] for rec in records if key in rec]
    return {"cases": len(occl), "pixels": _mean([float(o["pixels"]) for o in occl]),
            **{k: _mean([o.get(k) for o in occl]) for k in ("layered", "hard_lock", "strength", "collage", "paste")},
            **paired_difference([o.get("layered") for o in occl], [o.get("collage") for o in occl])}


def _locked_vs_collage(regions: list[dict]) -> dict[str, Any]:
    """The collage model on locked regions: its mean PSNR and the layered minus collage paired difference
    (reports before 2026-12-05 have no collage PSNR there: None and no pairs)."""
    return {"psnr_collage": _mean([r.get("collage") for r in regions]),
            **paired_difference([r["layered"] for r in regions], [r.get("collage") for r in regions])}


def summarise(records: list[dict]) -> dict[str, Any]:
    """Aggregate metrics over cases (means of per-region PSNRs, in dB)."""
    locked = [r for rec in records for r in rec["locked_regions"]]
    locked_subjects = [r for r in locked if r["name"] != BACKGROUND]
    unlocked = [r for rec in records for r in rec["unlocked_regions"]]
    unlocked_subjects = [r for r in unlocked if r["name"] != BACKGROUND]
    flips = [rec["lock_flip"] for rec in records if "lock_flip" in rec]
    engines = sorted({k for rec in records for k in rec["psnr_image"]})
    prompt_cases = [rec for rec in records if "prompt" in rec]
    summary: dict[str, Any] = {
        "cases": len(records),
        "locked": {
            "regions": len(locked), "psnr": _mean([r["layered"] for r in locked]),
            "psnr_hard_lock": _mean([r.get("hard_lock") for r in locked]),
            "psnr_strength": _mean([r.get("strength") for r in locked]),
            "vae_ceiling": _mean([r["vae"] for r in locked]),
            "collage": _locked_vs_collage(locked),
            "away": _away(locked),
            "subjects_only": {"regions": len(locked_subjects), "psnr": _mean([r["layered"] for r in locked_subjects]),
                              "psnr_hard_lock": _mean([r.get("hard_lock") for r in locked_subjects]),
                              "psnr_strength": _mean([r.get("strength") for r in locked_subjects]),
                              "vae_ceiling": _mean([r["vae"] for r in locked_subjects]),
                              "collage": _locked_vs_collage(locked_subjects),
                              "away": _away(locked_subjects)},
        },
        "unlocked": {
            "regions": len(unlocked_subjects),
            **{k: _mean([r.get(k) for r in unlocked_subjects])
               for k in ("layered", "hard_lock", "strength", "collage", "paste")},
            "layout_error_px": _mean([r.get("layout_error_px") for r in unlocked_subjects]),
            "layout_error_px_collage": _mean([r.get("layout_error_px_collage") for r in unlocked_subjects]),
        },
        "image": {k: {"psnr": _mean([rec["psnr_image"].get(k) for rec in records]),
                      "ssim": _mean([rec["ssim_image"].get(k) for rec in records])} for k in engines},
        "occlusion": _occlusion(records, "revealed"),
        "occlusion_locked": _occlusion(records, "revealed_locked"),
        "occlusion_all": _occlusion(records, "revealed_all"),
        "lock_flip": {"cases": len(flips), "locked": _mean([f["locked"] for f in flips]),
                      "unlocked": _mean([f["unlocked"] for f in flips])},
        "copy_probe": _copy_probe(records),
        "pruning": {
            "psnr_layered": _mean([rec["psnr_image"]["layered"] for rec in records]),
            "psnr_unpruned": _mean([rec["psnr_image"].get("unpruned") for rec in records]),
            "tokens_layered": _mean([rec["tokens"]["layered"] for rec in records]),
            "tokens_unpruned": _mean([rec["tokens"].get("unpruned") for rec in records]),
            "seconds_per_step_layered": _mean([rec["seconds_per_step"]["layered"] for rec in records]),
            "seconds_per_step_unpruned": _mean([rec["seconds_per_step"].get("unpruned") for rec in records]),
        },
        "prompt": {
            "cases": len(prompt_cases),
            **{k: {"background": _mean([float(rec["prompt"][k]["background"]) for rec in prompt_cases
                                        if k in rec["prompt"]]),
                   "lighting": _mean([float(rec["prompt"][k]["lighting"]) for rec in prompt_cases
                                      if k in rec["prompt"]])}
               for k in ("layered", "strength", "collage")},
        },
    }
    if any("identity" in rec for rec in records):
        from .identity import summarise_identity

        summary["identity"] = summarise_identity([r for rec in records for r in rec.get("identity", [])])
    if any("attention" in rec for rec in records):
        from .attention import summarise_attention

        summary["attention"] = summarise_attention([a for rec in records for a in rec.get("attention", [])])
    return summary


def _copy_probe(records: list[dict]) -> dict[str, Any]:
    """The copy probe's means: the same layer locked and unlocked in place, PSNR and identity."""
    probes = [rec["copy_probe"] for rec in records if "copy_probe" in rec]
    ident = [p["identity"] for p in probes if "identity" in p]
    return {"cases": len(probes), "locked": _mean([p["locked"] for p in probes]),
            "copy": _mean([p["copy"] for p in probes]),
            **paired_difference([p["copy"] for p in probes], [p["locked"] for p in probes]),
            "identity_cases": len(ident),
            "identity_locked": _mean([float(i["locked"]) for i in ident]),
            "identity_copy": _mean([float(i["copy"]) for i in ident])}


# ----------------------------------------------------------------------------------------------------------
# Figures


def canvas_preview(canvas: Canvas) -> Image.Image:
    """The canvas as an editor shows it: layers over a checkerboard, locked outlined green, unlocked orange."""
    w, h = canvas.generation_size
    yy, xx = np.mgrid[:h, :w]
    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 225, 190).astype(np.uint8)
    base = Image.fromarray(np.stack([checker] * 3 + [np.full_like(checker, 255)], -1), "RGBA")
    out = Image.alpha_composite(base, canvas.flatten((w, h)))
    draw = ImageDraw.Draw(out)
    for layer in canvas.visible_layers():
        if layer.kind == "background":
            if layer.locked:
                draw.rectangle((1, 1, w - 2, h - 2), outline=(40, 200, 80, 255), width=2)
            continue
        box = canvas.render_layer(layer, (w, h)).getchannel("A").getbbox()
        if box:
            colour = (40, 200, 80, 255) if layer.locked else (255, 150, 20, 255)
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=colour, width=2)
    return out.convert("RGB")


def _fit(size: tuple[int, int], cell: int) -> tuple[int, int]:
    """`size` scaled to fit a cell x cell square, aspect kept (a square becomes the whole cell)."""
    w, h = size
    scale = cell / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def figure_grid(rows: list[list[Image.Image]], header: list[str], out: Path, cell: int = 192) -> Path:
    """A grid of pictures with a header row of column titles, saved as PNG. Pictures keep their aspect: each
    fits a cell x cell square, and a row of wide pictures is only as tall as its tallest one."""
    pad, head = 4, 22
    cols = len(header)
    heights = [max((_fit(pic.size, cell)[1] for pic in row), default=cell) for row in rows]
    grid = Image.new("RGB", (cols * (cell + pad) + pad, head + sum(h + pad for h in heights) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(header):
        draw.text((pad + c * (cell + pad) + 4, 5), title, fill=(0, 0, 0))
    top = head + pad
    for row, row_h in zip(rows, heights, strict=True):
        for c, pic in enumerate(row):
            w, h = _fit(pic.size, cell)
            grid.paste(pic.resize((w, h), Image.Resampling.LANCZOS),
                       (pad + c * (cell + pad) + (cell - w) // 2, top + (row_h - h) // 2))
        top += row_h + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


# ----------------------------------------------------------------------------------------------------------
# Entry point


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

    from ..pipeline import LayerComposerPipeline, skipped_steps
    from ..world import generate_dataset

    if strength is not None:
        skipped_steps(steps, strength)  # a bad strength fails before the models load
    if occlusion_only and collage_model is None:
        raise LayerComposerError("the occlusion-only evaluation compares with a collage model: give --collage-model")
    ident = None
    if identifier is not None:
        from .identity import IDENTIFIER_DIR, Identifier

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
            if (_SUBSET_KEY[occlusion_subset] if occlusion_only else "revealed_all") in record \
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


# ----------------------------------------------------------------------------------------------------------
# Report


def _f(value: float | None, unit: str = " dB", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def results_markdown(report: dict[str, Any], command: str, machine: str) -> str:
    """docs/RESULTS.md: the measured numbers, against the targets of the training issue."""
    from ..pipeline import skipped_steps

    s, st = report["summary"], report["settings"]
    lk, ul, oc, pr, fl = s["locked"], s["unlocked"], occlusion_subset(s), s["pruning"], s["lock_flip"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "**missed**")

    met = targets_met(s)
    locked_ok, unlocked_ok, occl_ok, prune_ok = met["locked"], met["unlocked"], met["occlusion"], met["pruning"]
    lines = [
        "# Results: the demo model in the sprites world",
        "",
        f"Measured with `{command}` on {machine}. {s['cases']} test canvases from held-out scenes "
        f"(identities never seen in training; scenes of `layercomposer world generate --split heldout --seed "
        f"{st['eval_seed']}`), {st['steps']} sampling steps, guidance {st['guidance']}. Every number is measured "
        "against the true target picture. PSNR is averaged over regions (each locked layer, each unlocked "
        "character), in dB, peak 1.",
        "",
        *_identity_section(s),
        "## Against the targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| locked-region PSNR >= 25 dB and within 3 dB of the VAE ceiling | {_f(lk['psnr'])} vs ceiling "
        f"{_f(lk['vae_ceiling'])} ({lk['regions']} regions) | {verdict(locked_ok)} |",
        *_identity_target_row(s, verdict(met.get("identity"))),
        f"| unlocked-region PSNR above naive pasting (secondary: against a target in another pose, which a blur "
        f"can meet) | {_f(ul['layered'])} vs pasting {_f(ul['paste'])} ({ul['regions']} characters) | "
        f"{verdict(unlocked_ok)} |",
        f"| layered model above the collage model on the occlusion subset{_subset_words(s)} | "
        f"{_f(oc['layered'])} vs {_f(oc['collage'])} ({oc['cases']} cases{_paired(oc)}){_parts_cell(s)} | "
        f"{verdict(occl_ok)} |",
        f"| pruned within {PRUNE_TOLERANCE_DB:g} dB of unpruned (or above), with fewer tokens | "
        f"{_f(pr['psnr_layered'])} vs "
        f"{_f(pr['psnr_unpruned'])}; {_f(pr['tokens_layered'], '', 0)} vs {_f(pr['tokens_unpruned'], '', 0)} "
        f"tokens | {verdict(prune_ok)} |",
        *missed_targets(s),
        "",
        "## Details",
        "",
        f"- Locked characters only (background excluded): {_f(lk['subjects_only']['psnr'])} vs VAE ceiling "
        f"{_f(lk['subjects_only']['vae_ceiling'])} ({lk['subjects_only']['regions']} regions); by what the canvas "
        "does with the background: " + "; ".join(
            f"{bg} {_f(psnr)}{'' if collage is None else f' (collage model {_f(collage)})'} vs {_f(vae)} ({n})"
            for bg, (n, psnr, vae, collage) in locked_subjects_by_background(report["cases"]).items()) + ".",
        *_away_line(lk),
        *_collage_locked_line(lk),
        *_occlusion_parts(s),
        "- With `--hard-lock` (latent pixels, 8 px, showing locked layers only held to their latents while "
        f"sampling; an inference option, not the model): locked regions {_f(lk.get('psnr_hard_lock'))}, "
        f"locked characters {_f(lk['subjects_only'].get('psnr_hard_lock'))}, "
        f"unlocked characters {_f(ul.get('hard_lock'))}, occlusion subset {_f(oc.get('hard_lock'))}.",
        *([f"- Image-to-image from the flattened canvas (`--strength {st['strength']:g}`: "
           f"{st['steps'] - skipped_steps(st['steps'], st['strength'])} of {st['steps']} steps run from the noised "
           f"canvas; an inference option, not the model): locked regions {_f(lk.get('psnr_strength'))}, "
           f"unlocked characters {_f(ul.get('strength'))}, occlusion subset {_f(oc.get('strength'))}, "
           f"left-out background's scene recognised "
           f"{_f(_pct(s['prompt'].get('strength', {}).get('background')), '%', 0)}, lighting "
           f"{_f(_pct(s['prompt'].get('strength', {}).get('lighting')), '%', 0)}."]
          if st.get("strength") else []),
        f"- Same character locked vs unlocked (everything else equal, {fl['cases']} cases): "
        f"{_f(fl['locked'])} locked, {_f(fl['unlocked'])} unlocked.",
        f"- Layout: unlocked characters drawn {_f(ul['layout_error_px'], ' px', 1)} from where the target has them "
        f"(layered model), {_f(ul['layout_error_px_collage'], ' px', 1)} (collage model); template matching, "
        "search +-24 px.",
        f"- Unlocked characters, collage model: {_f(ul['collage'])}.",
        f"- Prompt adherence ({s['prompt']['cases']} cases whose background is not locked), classified from "
        "the picture by the world's own classifiers: layered model background "
        f"{_f(_pct(s['prompt'].get('layered', {}).get('background')), '%', 0)}, lighting "
        f"{_f(_pct(s['prompt'].get('layered', {}).get('lighting')), '%', 0)}; collage model background "
        f"{_f(_pct(s['prompt'].get('collage', {}).get('background')), '%', 0)}, lighting "
        f"{_f(_pct(s['prompt'].get('collage', {}).get('lighting')), '%', 0)}.",
        f"- Pruning: {_f(_ms(pr['seconds_per_step_layered']), ' ms', 0)} per step pruned vs "
        f"{_f(_ms(pr['seconds_per_step_unpruned']), ' ms', 0)} unpruned (same canvases).",
        "",
        "| whole image | PSNR | SSIM |",
        "|---|---|---|",
    ]
    names = {"layered": "layered model", "hard_lock": "layered model, hard lock",
             "strength": f"layered model, strength {st.get('strength') or 1:g}",
             "unpruned": "layered model, unpruned", "collage": "collage model",
             "vae": "VAE reconstruction (ceiling)", "paste": "naive pasting"}
    for key, label in names.items():
        if key in s["image"]:
            lines.append(f"| {label} | {_f(s['image'][key]['psnr'])} | {_f(s['image'][key]['ssim'], '', 3)} |")
    figures = [f for f in report.get("figures", []) if f]
    if figures:
        hard = " | layered model with `--hard-lock`" if st.get("hard_lock") else ""
        if st.get("strength"):
            hard += f" | layered model with `--strength {st['strength']:g}`"
        lines += ["", "## Figures", "", "Columns: canvas (locked layers outlined green, unlocked orange) | "
                  f"collage model | layered model{hard} | target."]
        for fig in figures:
            lines += ["", f"![{Path(fig).stem}](figures/{Path(fig).name})"]
    return "\n".join(lines) + "\n"


def _identity_target_row(s: dict[str, Any], verdict: str) -> list[str]:
    ident = s.get("identity")
    if not ident:
        return []
    e = ident["engines"]
    collage = e.get("collage", {}).get("top1")
    return [f"| unlocked identity: top-1 >= {IDENTITY_TARGET:.0%} and {IDENTITY_MARGIN * 100:.0f} points above the "
            f"collage model | {_f(_pct(e['layered']['top1']), '%', 0)} vs collage "
            f"{_f(_pct(collage), '%', 0)} ({ident['regions']} characters) | {verdict} |"]


def _identity_section(s: dict[str, Any]) -> list[str]:
    """The headline for unlocked layers: identity among the gallery (reports before 2026-12-06 have none)."""
    if "identity" not in s:
        return []
    from .identity import identity_markdown

    cp = s.get("copy_probe", {})
    lines = ["## Unlocked characters: identity", "",
             "Does the picture show the right character where the target has it? Each unlocked character's "
             "visible region in the target is identified among "
             f"{s['identity']['gallery']} held-out identities (the true one, its scene-mates, random others) by "
             "the sprites identifier (`eval/identity.py`: a small CNN trained only on renders, never on these "
             "pictures), the world's analogue of the paper's ArcFace.", "",
             *identity_markdown(s["identity"])]
    if cp.get("cases"):
        lines += ["", f"- Copy probe ({cp['cases']} cases): the target's own layer in place but unlocked reads "
                  f"{_f(cp['copy'])} against {_f(cp['locked'])} for the same layer locked (paired difference "
                  f"{_f(cp['difference'])}, s.e. {_f(cp['difference_se'])}); identity "
                  f"{_f(_pct(cp.get('identity_copy')), '%', 0)} unlocked vs "
                  f"{_f(_pct(cp.get('identity_locked')), '%', 0)} locked ({cp.get('identity_cases', 0)} cases)."]
    at = s.get("attention")
    if at and at["characters"]:
        def part(a: dict[str, Any]) -> str:
            return (f"own layer {_f(_pct(a['own']), '%', 1)}, other unlocked layers "
                    f"{_f(_pct(a['other_unlocked']), '%', 1)}, locked {_f(_pct(a['locked']), '%', 1)}, noisy "
                    f"{_f(_pct(a['noisy']), '%', 1)}, text {_f(_pct(a['text']), '%', 1)}")

        lines += [f"- Attention mass (`eval/attention.py`; {at['characters']} characters, mean over heads, blocks "
                  "and noise levels 0.3/0.6/0.9) from the noisy tokens where the target shows an unlocked character: "
                  f"{part(at)}. Recognised in the layered picture ({at['recognised']['characters']}): "
                  f"{part(at['recognised']) if at['recognised']['characters'] else 'none'}; not recognised "
                  f"({at['not_recognised']['characters']}): "
                  f"{part(at['not_recognised']) if at['not_recognised']['characters'] else 'none'}."]
    return [*lines, ""]


def _away_line(lk: dict[str, Any]) -> list[str]:
    """The details line of the locked regions' pixels away from unlocked characters (none for older reports)."""
    away, subjects = lk.get("away"), lk["subjects_only"].get("away")
    if not away or away["psnr"] is None:
        return []
    chars = ("" if not subjects or subjects["psnr"] is None else
             f"; locked characters alone {_f(subjects['psnr'])} vs {_f(subjects['vae_ceiling'])} "
             f"({subjects['regions']} regions)")
    return [f"- Locked regions away from unlocked characters (their pixels more than {AWAY_PX} px from any "
            f"unlocked character in the target or on the canvas: {_f(_pct(away['pixel_share']), '%', 0)} of the "
            f"locked pixels, {away['regions']} regions): {_f(away['psnr'])} vs VAE ceiling "
            f"{_f(away['vae_ceiling'])}, {_f(away['vae_ceiling'] - away['psnr'])} below it (whole regions: "
            f"{_f(lk['vae_ceiling'] - lk['psnr'])}){chars}. The difference is where the model's redrawing of "
            "an unlocked character spills onto locked pixels."]


def _collage_locked_line(lk: dict[str, Any]) -> list[str]:
    """The details line of the collage model on locked regions (none for reports without it)."""
    whole, subjects = lk.get("collage"), lk["subjects_only"].get("collage")
    if not whole or whole["psnr_collage"] is None:
        return []
    away = lk.get("away") or {}
    away_text = ("" if away.get("psnr_collage") is None else
                 f"; away from unlocked characters {_f(away['psnr_collage'])} against {_f(away['psnr'])}")
    chars = ("" if not subjects or subjects["psnr_collage"] is None else
             f"; locked characters alone {_f(subjects['psnr_collage'])} against {_f(lk['subjects_only']['psnr'])}, "
             f"layered minus collage {_difference(subjects, better=True)}")
    return [f"- Locked regions, collage model (the ablation without the layered canvas: the same layers flattened "
            f"into one picture, with nothing to tell locked from unlocked): {_f(whole['psnr_collage'])} against the "
            f"layered model's {_f(lk['psnr'])}, layered minus collage {_difference(whole, better=True)}"
            f"{chars}{away_text}."]


def occlusion_markdown(report: dict[str, Any], command: str, machine: str) -> str:
    """The page of an occlusion-only run: the layered and the collage model on the occlusion subset alone."""
    s, st = report["summary"], report["settings"]
    subset = st.get("occlusion_subset", "unlocked")
    oc = s["occlusion"] if subset == "unlocked" else s["occlusion_all"]
    diff, se = oc.get("difference"), oc.get("difference_se")
    verdict = {
        None: "not measured (fewer than two cases)",
        "above": "the layered model is above the collage model (the difference is more than two standard errors)",
        "below": "the layered model is below the collage model (the difference is more than two standard errors)",
        "unclear": "the two models are not told apart (the difference is within two standard errors)",
    }[occlusion_call(oc)]
    key = _SUBSET_KEY[subset]
    revealed = [rec[key] for rec in report["cases"] if key in rec]
    what, title, note = (
        ("an unlocked character", "the occlusion subset's unlocked characters alone",
         " (The full evaluation's occlusion subset also counts the hidden pixels of locked layers; RESULTS.md "
         "reports both parts.)") if subset == "unlocked" else
        ("any layer", "the occlusion subset alone", ""))
    lines = [
        f"# Results: {title}",
        "",
        f"Measured with `{command}` on {machine}. {oc['cases']} test canvases of the occlusion subset: canvases "
        "built from held-out scenes exactly as in the full evaluation (the same sampler and seeds), kept only "
        f"when the target shows at least {MIN_REVEALED_PIXELS} pixels of {what} that another "
        "layer hides in the flattened canvas (the collage). PSNR over those revealed pixels against the target, "
        f"averaged over cases, in dB; {st['steps']} sampling steps, guidance {st['guidance']}.{note}",
        "",
        "| | PSNR on the revealed pixels |",
        "|---|---|",
        f"| layered model | {_f(oc['layered'])} |",
        f"| collage model | {_f(oc['collage'])} |",
        *([f"| layered model, `--hard-lock` | {_f(oc['hard_lock'])} |"] if oc.get("hard_lock") is not None else []),
        f"| naive pasting | {_f(_mean([r.get('paste') for r in revealed]))} |",
        "",
        f"Layered minus collage, paired by case: {_f(diff)} (standard error {_f(se)}; the layered model above in "
        f"{oc.get('better', 0)} of {oc.get('pairs', 0)} cases): {verdict}. Revealed pixels per case: "
        f"{_f(_mean([float(r['pixels']) for r in revealed]), '', 0)} on average.",
        *(["", *_occlusion_parts(s)] if subset == "all" else []),
    ]
    figures = [f for f in report.get("figures", []) if f]
    if figures:
        lines += ["", "Columns: canvas (locked layers outlined green, unlocked orange) | collage model | layered "
                  "model | target."]
        lines += ["", *(f"![{Path(fig).stem}](figures/{Path(fig).name})" for fig in figures)]
    return "\n".join(lines) + "\n"


def locked_subjects_by_background(cases: list[dict[str, Any]]) -> dict[str, tuple[int, float, float, float | None]]:
    """Locked characters (not the background layer) grouped by the case's background (`none`, `unlocked`,
    `locked`): {background: (regions, mean PSNR of the layered model, mean VAE ceiling, mean PSNR of the collage
    model or None where a report has none)}, groups with any."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for case in cases:
        for region in case["locked_regions"]:
            if region["name"] != "background":
                groups.setdefault(case["background"], []).append(region)
    order = {"none": 0, "unlocked": 1, "locked": 2}
    return {bg: (len(v), float(np.mean([r["layered"] for r in v])), float(np.mean([r["vae"] for r in v])),
                 _mean([r.get("collage") for r in v]))
            for bg, v in sorted(groups.items(), key=lambda kv: order.get(kv[0], 3))}


PRUNE_TOLERANCE_DB = 0.3  # the training issue: pruned within this many dB of unpruned


def targets_met(summary: dict[str, Any]) -> dict[str, bool | None]:
    """Each target of the training issue: met (True), missed (False) or not measured (None)."""
    lk, ul, oc, pr = summary["locked"], summary["unlocked"], occlusion_subset(summary), summary["pruning"]
    return {
        "locked": None if lk["psnr"] is None else lk["psnr"] >= 25 and lk["vae_ceiling"] - lk["psnr"] <= 3,
        "unlocked": None if ul["layered"] is None else ul["layered"] > ul["paste"],
        "identity": _identity_met(summary),
        # The layered model must be above the collage model by more than two standard errors of the paired
        # difference: a mean a tenth of a dB above with a 0.4 dB standard error does not show it.
        "occlusion": None if oc["layered"] is None or oc["collage"] is None else (
            occlusion_call(oc) == "above" if oc.get("difference_se") is not None
            else oc["layered"] > oc["collage"]),  # older reports: no paired statistics
        # Pruning may cost at most PRUNE_TOLERANCE_DB; pruned canvases doing better than unpruned ones (the model
        # is trained pruned) meet it.
        "pruning": None if pr["psnr_layered"] is None else (
            pr["psnr_layered"] >= pr["psnr_unpruned"] - PRUNE_TOLERANCE_DB
            and pr["tokens_layered"] < pr["tokens_unpruned"]),
    }


def _identity_met(summary: dict[str, Any]) -> bool | None:
    """Unlocked identity (issue 30): layered top-1 at least 60% and at least 10 points above the collage model."""
    ident = summary.get("identity")
    if not ident or ident["engines"].get("layered", {}).get("top1") is None:
        return None
    layered = ident["engines"]["layered"]["top1"]
    collage = ident["engines"].get("collage", {}).get("top1")
    return layered >= IDENTITY_TARGET and (collage is None or layered - collage >= IDENTITY_MARGIN)


def missed_targets(summary: dict[str, Any]) -> list[str]:
    """Markdown lines for each target the summary misses: by how much, and what the measurements say about why."""
    lk, ul, oc, pr = summary["locked"], summary["unlocked"], occlusion_subset(summary), summary["pruning"]
    met = targets_met(summary)
    lines: list[str] = []
    if met["locked"] is False:
        gap = lk["vae_ceiling"] - lk["psnr"]
        why = (f"the VAE's own reconstruction of the same pixels is {lk['vae_ceiling']:.2f} dB, itself "
               f"{25 - lk['vae_ceiling']:.2f} dB short of 25: no model that decodes through this VAE can reach "
               "it; a VAE that keeps more (less downsampling, more latent channels) comes first"
               if lk["vae_ceiling"] < 25 else "the VAE allows it; the model is what falls short")
        away = lk.get("away") or {}
        near = "" if away.get("psnr") is None else (
            f" Away from unlocked characters ({_f(_pct(away['pixel_share']), '%', 0)} of the locked pixels) they read "
            f"{away['psnr']:.2f} dB, {away['vae_ceiling'] - away['psnr']:.2f} dB below their ceiling: the rest of "
            "the gap is where the model's redrawing of an unlocked character spills over a locked layer (details "
            "below).")
        lines.append(f"- Locked regions: {max(0.0, 25 - lk['psnr']):.2f} dB short of 25 dB and {gap:.2f} dB below "
                     f"the VAE ceiling ({'within' if gap <= 3 else 'not within'} 3 dB); {why}.{near}")
    if met["unlocked"] is False:
        lines.append(f"- Unlocked regions: {ul['paste'] - ul['layered']:.2f} dB below naive pasting.")
    if met["occlusion"] is False:
        se, diff = oc.get("difference_se"), oc["layered"] - oc["collage"]
        noise = "" if se is None else (
            f" (the paired difference has a standard error of {se:.2f} dB over {oc['cases']} cases: "
            + ("more than two standard errors" if occlusion_call(oc) == "below" else "within noise") + ")")
        where = f"{diff:.2f} dB above" if diff > 0 else f"{-diff:.2f} dB below"
        shown = ", not shown" if diff > 0 else ""
        lines.append(f"- Occlusion subset: {where} the collage model{noise}{shown}.")
    if met["pruning"] is False:
        # Name only the parts that fail: the quality cost, the token count, or both.
        drop = pr["psnr_unpruned"] - pr["psnr_layered"]
        reasons = []
        if drop > PRUNE_TOLERANCE_DB:
            reasons.append(f"{drop:.2f} dB below unpruned ({PRUNE_TOLERANCE_DB:g} allowed)")
        if pr["tokens_layered"] >= pr["tokens_unpruned"]:
            reasons.append(f"no fewer tokens ({pr['tokens_layered']:.0f} pruned vs {pr['tokens_unpruned']:.0f} "
                           "unpruned)")
        lines.append(f"- Pruning: {' and '.join(reasons)}.")
    return ["", "Where a target is missed:", "", *lines] if lines else []


def occlusion_subset(summary: dict[str, Any]) -> dict[str, Any]:
    """The occlusion subset the target is judged on: every layer's revealed pixels ("occlusion_all"); reports
    written before 2026-12-05 have only the unlocked characters' part ("occlusion")."""
    every = summary.get("occlusion_all")
    return every if every and every.get("cases") else summary["occlusion"]


def _subset_words(summary: dict[str, Any]) -> str:
    return " (pixels of any layer that the target shows and the collage hides)" if summary.get("occlusion_all") else ""


def _parts_cell(summary: dict[str, Any]) -> str:
    """The occlusion row's split at a glance: layered minus collage on each part (none for older reports)."""
    if not summary.get("occlusion_all"):
        return ""

    return (f"; layered minus collage on locked layers' pixels {_difference(summary['occlusion_locked'])}, on "
            f"unlocked characters' {_difference(summary['occlusion'])}")


def _difference(oc: dict[str, Any], better: bool = False) -> str:
    """`+2.32 dB (s.e. 0.55)` for a layered minus collage paired difference (an occlusion subset's, or locked
    regions'; `better`: `; layered better in 30 of 39` inside the brackets)."""
    if oc.get("difference") is None:
        return "n/a"
    inside = [] if oc.get("difference_se") is None else [f"s.e. {oc['difference_se']:.2f}"]
    if better:
        inside.append(f"layered better in {oc['better']} of {oc['pairs']}")
    return f"{oc['difference']:+.2f} dB" + (f" ({'; '.join(inside)})" if inside else "")


def _occlusion_parts(summary: dict[str, Any]) -> list[str]:
    """The details line splitting the occlusion subset into unlocked characters' and locked layers' pixels."""
    if not summary.get("occlusion_all"):
        return []

    def part(oc: dict[str, Any]) -> str:
        if not oc.get("cases"):
            return "no case"
        diff = "" if oc.get("difference") is None else f", layered minus collage {_difference(oc, better=True)}"
        return (f"layered {_f(oc['layered'])}, collage {_f(oc['collage'])}, pasting {_f(oc.get('paste'))} "
                f"({oc['cases']} cases, {_f(oc.get('pixels'), '', 0)} pixels a case){diff}")

    return [f"- The occlusion subset by layer (an unlocked background's revealed pixels count in the whole subset "
            f"only). Unlocked characters' pixels (both models must redraw the character, "
            f"the layered model from its whole layer, the collage model from what the collage shows of it): "
            f"{part(summary['occlusion'])}. Locked layers' pixels that an unlocked layer covers in the canvas but "
            f"not in the target (the layered canvas still holds them, the collage has lost them): "
            f"{part(summary['occlusion_locked'])}."]


def occlusion_call(oc: dict[str, Any]) -> str | None:
    """The occlusion subset's paired comparison: "above" or "below" (the layered model against the collage model,
    by more than two standard errors of the paired difference), "unclear" when not told apart, None when there
    is no standard error (fewer than two cases, or an older report)."""
    diff, se = oc.get("difference"), oc.get("difference_se")
    if diff is None and oc.get("layered") is not None and oc.get("collage") is not None:
        diff = oc["layered"] - oc["collage"]  # the same cases for both models: the mean of the paired differences
    if diff is None or se is None:
        return None
    return "above" if diff - 2 * se > 0 else "below" if diff + 2 * se < 0 else "unclear"


def _paired(oc: dict[str, Any]) -> str:
    """`; paired s.e. 0.42 dB` for the occlusion row (older reports have no paired statistics)."""
    return "" if oc.get("difference_se") is None else f"; paired s.e. {oc['difference_se']:.2f} dB"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value


def examples_figure(model: str, examples: Path, out: Path, steps: int = 28, seed: int = 0,
                    collage_model: str | None = None, strength: float | None = None) -> Path:
    """A grid of the example canvases: canvas | (collage model) | layered model | (layered model at
    `strength`, image-to-image) | target (when known)."""
    from ..canvas import load_canvas
    from ..pipeline import LayerComposerPipeline

    pipe = LayerComposerPipeline.from_pretrained(model)
    collage_pipe = LayerComposerPipeline.from_pretrained(collage_model) if collage_model else None
    rows = []
    for path in sorted(examples.glob("*.json")):
        canvas = load_canvas(path)
        row = [canvas_preview(canvas)]
        if collage_pipe is not None:
            row.append(collage_pipe(canvas, num_inference_steps=steps, seed=seed, mode="collage"))
        row.append(pipe(canvas, num_inference_steps=steps, seed=seed))
        if strength is not None:
            row.append(pipe(canvas, num_inference_steps=steps, seed=seed, strength=strength))
        target = examples / "targets" / f"{path.stem}.png"
        row.append(Image.open(target).convert("RGB") if target.is_file() else Image.new("RGB", row[0].size, "white"))
        rows.append(row)
    header = ["canvas (green locked)", *(["collage model"] if collage_pipe else []), "layered model",
              *([f"strength {strength:g}"] if strength is not None else []), "target"]
    return figure_grid(rows, header, out, cell=224)
