"""The copy probe for several models on the same held-out cases: each case's first unlocked character (with
enough visible pixels) replaced by the target's own layer in place, unlocked, then locked; identity (top-1
among 40) and PSNR on the character's visible region.

    python scripts/copy_probe.py 30 shipped=demo control=runs/control-200 --data data/heldout
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from layercomposer.data.scenes import SceneSet
from layercomposer.eval.identity import MIN_VISIBLE_PIXELS, Identifier, candidates
from layercomposer.eval.metrics import psnr
from layercomposer.eval.sprites import EVAL_SEED, build_cases, copy_probe_canvas
from layercomposer.pipeline import LayerComposerPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", type=int)
    parser.add_argument("models", nargs="+", metavar="NAME=MODEL")
    parser.add_argument("--data", default="data/heldout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipes = {name: LayerComposerPipeline.from_pretrained(model)
             for name, model in (m.split("=", 1) for m in args.models)}
    ident = Identifier.load()
    results: dict[str, list[tuple[bool, float]]] = {f"{k}/{v}": [] for k in pipes for v in ("copy", "locked")}
    for case in build_cases(SceneSet.load(args.data), args.cases):
        names = [n for n in case.sample.unlocked if n != "background" and ident.knows(n)
                 and case.visible[n].sum() >= MIN_VISIBLE_PIXELS]
        if not names:
            continue
        name, mask = names[0], case.visible[names[0]]
        cands = candidates(name, [n for n in case.scene.subjects if n != name], ident.ids,
                           np.random.default_rng([EVAL_SEED, case.index, 7]))
        copy = copy_probe_canvas(case, name)
        locked = copy.copy()
        locked.layers = [dataclasses.replace(la, locked=True) if la.name == name else la for la in locked.layers]
        for k, pipe in pipes.items():
            for v, canvas in (("copy", copy), ("locked", locked)):
                out = pipe.generate(canvas, seed=1000 + case.index).image
                results[f"{k}/{v}"].append((ident.identify(out, mask, cands) == name,
                                            psnr(out, case.sample.target, mask)))
    for key, vals in results.items():
        a = np.array(vals, float)
        print(f"{key}: n={len(a)} identity {a[:, 0].mean():.2f} (s.e. {a[:, 0].std() / np.sqrt(len(a)):.2f}) "
              f"PSNR {a[:, 1].mean():.2f} dB")


if __name__ == "__main__":
    main()
