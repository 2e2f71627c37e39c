"""The sprites evaluation's pages: docs/RESULTS.md (`results_markdown`) and docs/OCCLUSION.md
(`occlusion_markdown`, a section per occlusion subset), from a report's JSON."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .cases import AWAY_PX, MIN_REVEALED_PIXELS, SUBSET_KEY
from .summary import (
    IDENTITY_MARGIN,
    IDENTITY_TARGET,
    PRUNE_TOLERANCE_DB,
    locked_subjects_by_background,
    mean_of,
    occlusion_call,
    occlusion_subset,
    targets_met,
)


def _f(value: float | None, unit: str = " dB", digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def results_markdown(report: dict[str, Any], command: str, machine: str) -> str:
    """docs/RESULTS.md: the measured numbers, against the targets of the training issue."""
    from ...pipeline import skipped_steps

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
    from ..identity import identity_markdown

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


OCCLUSION_TITLE = "# Results: the occlusion subset alone"
OCCLUSION_SECTIONS = {"all": "## Any layer's hidden pixels (`--occlusion-subset all`)",
                      "unlocked": "## Unlocked characters' hidden pixels (`--occlusion-subset unlocked`, the default)"}
"""The occlusion page's sections, in page order: one per subset, each written by its own occlusion-only run."""
_SECTION = re.compile(r"<!-- occlusion-subset: (\w+) -->\n(.*?)<!-- /occlusion-subset: \1 -->\n", re.DOTALL)


def occlusion_markdown(report: dict[str, Any], command: str, machine: str, page: str | None = None) -> str:
    """The occlusion page (docs/OCCLUSION.md) with this occlusion-only run's section: `page`, the page as it is
    (None: none yet), keeps the other subset's section; a page without sections is replaced whole."""
    subset = report["settings"].get("occlusion_subset", "unlocked")
    sections = dict(_SECTION.findall(page or ""))
    sections[subset] = occlusion_section(report, command, machine)
    lines = [
        OCCLUSION_TITLE,
        "",
        "The layered and the collage model on the canvases that show what the collage hides: pixels of any layer "
        "that the target shows and another layer covers in the flattened canvas (the occlusion subset that "
        "RESULTS.md judges the target on), and the unlocked characters' part of them alone. Each section is "
        "written by its own run (`layercomposer eval sprites --occlusion-only [--occlusion-subset all] "
        "--results docs/OCCLUSION.md`), which keeps the other section.",
    ]
    for name in OCCLUSION_SECTIONS:
        if name in sections:
            lines += ["", f"<!-- occlusion-subset: {name} -->", sections[name].rstrip("\n"),
                      f"<!-- /occlusion-subset: {name} -->"]
    return "\n".join(lines) + "\n"


def occlusion_section(report: dict[str, Any], command: str, machine: str) -> str:
    """One occlusion-only run's section of the occlusion page: the layered and the collage model on its subset."""
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
    key = SUBSET_KEY[subset]
    revealed = [rec[key] for rec in report["cases"] if key in rec]
    what, note = (
        ("an unlocked character",
         " (The full evaluation's occlusion subset also counts the hidden pixels of locked layers; RESULTS.md "
         "reports both parts.)") if subset == "unlocked" else
        ("any layer", ""))
    lines = [
        OCCLUSION_SECTIONS[subset],
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
        f"| naive pasting | {_f(mean_of([r.get('paste') for r in revealed]))} |",
        "",
        f"Layered minus collage, paired by case: {_f(diff)} (standard error {_f(se)}; the layered model above in "
        f"{oc.get('better', 0)} of {oc.get('pairs', 0)} cases): {verdict}. Revealed pixels per case: "
        f"{_f(mean_of([float(r['pixels']) for r in revealed]), '', 0)} on average.",
        *(["", *_occlusion_parts(s)] if subset == "all" else []),
    ]
    figures = [f for f in report.get("figures", []) if f]
    if figures:
        lines += ["", "Columns: canvas (locked layers outlined green, unlocked orange) | collage model | layered "
                  "model | target."]
        lines += ["", *(f"![{Path(fig).stem}](figures/{Path(fig).name})" for fig in figures)]
    return "\n".join(lines) + "\n"


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


def _paired(oc: dict[str, Any]) -> str:
    """`; paired s.e. 0.42 dB` for the occlusion row (older reports have no paired statistics)."""
    return "" if oc.get("difference_se") is None else f"; paired s.e. {oc['difference_se']:.2f} dB"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


def _pct(value: float | None) -> float | None:
    return None if value is None else 100 * value
