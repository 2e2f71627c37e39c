"""Evaluation commands: `eval sprites|identifier|examples|photos|study|study-summary`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..errors import LayerComposerError
from .common import default_model


def add_eval_parsers(sub: Any) -> None:
    """`eval` and its sub-commands."""
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
                    "writes that subset's section of the occlusion page (docs/OCCLUSION.md), keeping the other")
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
    ep.add_argument("--engines", default="layered,paste",
                    help="comma-separated: layered, paste (the flattened canvas, no model; formerly 'collage'), "
                    "refine-kontext, refine-qwen, refine-demo (default: layered,paste)")
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


def cmd_eval_sprites(args: argparse.Namespace) -> int:
    from ..eval.sprites import occlusion_markdown, results_markdown, run_eval, save_report

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
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        if args.occlusion_only:  # this subset's section; the page's other section stays
            page = results.read_text() if results.is_file() else None
            results.write_text(occlusion_markdown(report, command, args.machine, page))
        else:
            results.write_text(results_markdown(report, command, args.machine))
    print(json.dumps(report["summary"], indent=2))
    return 0


def cmd_eval_identifier(args: argparse.Namespace) -> int:
    from ..eval.identity import IdentifierConfig, train_identifier

    identifier = train_identifier(IdentifierConfig(seed=args.seed),
                                  log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {identifier.save(args.out)}", file=sys.stderr)
    return 0


def cmd_eval_examples(args: argparse.Namespace) -> int:
    from ..eval.sprites import examples_figure

    out = examples_figure(args.model or default_model(), Path(args.examples), Path(args.out), args.steps,
                          collage_model=args.collage_model, strength=args.strength)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_eval_photos(args: argparse.Namespace) -> int:
    from ..eval.photos import EvalOptions, evaluate_photos, parse_engines

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
    from ..photo.study import build_study

    items = build_study(args.results, args.output, seed=args.seed, link=args.link, title=args.title)
    print(f"wrote {args.output} ({len(items)} canvases)", file=sys.stderr)
    return 0


def cmd_eval_study_summary(args: argparse.Namespace) -> int:
    from ..photo.study import format_summary, summarise_choices

    summary = summarise_choices(args.choices)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
