"""A user study on the results of `layercomposer eval photos`: one self-contained HTML page, and win rates.

The page shows, for each canvas, its prompt and identity references, then the outputs of the engines side by
side in a seeded random order, labelled A, B, C... (engine names are not shown; they are in the page's data,
which a participant does not read). A click picks the best picture; choices stay in the browser's local storage
and "Download choices" saves them as JSON:

    {"format": "layercomposer-study-choices/1", "study": ..., "seed": ..., "choices": [
        {"canvas": "c1", "order": ["refine-qwen", "layered", ...], "chosen": "layered", "position": 1}, ...]}

Pictures are embedded as data URIs (nothing else is fetched: no CDN, no network), or with ``link=True``
referenced by paths relative to the page.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..canvas import write_atomic
from ..errors import LayerComposerError

CHOICES_FORMAT = "layercomposer-study-choices/1"


@dataclass
class StudyItem:
    canvas: str
    prompt: str | None
    order: list[str]
    """Engine names in the order shown (left to right)."""
    images: list[Path]
    references: list[Path]


def study_items(results: str | os.PathLike[str], seed: int = 0) -> list[StudyItem]:
    """The canvases of a results folder with their outputs, each in a seeded random order."""
    root = Path(results)
    table = root / "table.json"
    if not table.is_file():
        raise LayerComposerError(f"--results {results}: no table.json (run `layercomposer eval photos` first)")
    try:
        report = json.loads(table.read_text())
        canvases = report["per_canvas"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LayerComposerError(f"{table}: not a table.json of `eval photos` ({exc})") from None
    items = []
    for entry in canvases:
        engines = sorted(entry["engines"])
        if len(engines) < 2:
            continue  # nothing to choose between
        order = list(engines)
        random.Random(f"{seed}/{entry['id']}").shuffle(order)
        images = [root / entry["engines"][name]["output"] for name in order]
        for path in images:
            if not path.is_file():
                raise LayerComposerError(f"--results {results}: {path.relative_to(root)} is missing")
        refs = [root / p for p in entry.get("references", {}).values() if (root / p).is_file()]
        items.append(StudyItem(entry["id"], entry.get("prompt"), order, images, refs))
    if not items:
        raise LayerComposerError(f"--results {results}: no canvas has outputs of two engines or more")
    return items


def _src(path: Path, page_dir: Path, link: bool) -> str:
    if link:
        return html.escape(Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix(), quote=True)
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}.get(
        path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#f6f6f6;color:#222}
h1{font-size:1.4em} .item{background:#fff;border-radius:8px;padding:1em;margin:1em 0;box-shadow:0 1px 3px #0002}
.prompt{font-size:1.1em;margin:.2em 0 .6em} .refs img{height:96px;margin-right:6px;border:1px solid #ccc}
.options{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;cursor:pointer;border:4px solid transparent;
border-radius:6px;padding:4px} figure img{max-width:320px;max-height:320px;display:block}
figure.chosen{border-color:#1a7f37;background:#e6f4ea} figcaption{text-align:center;font-weight:bold}
#bar{position:sticky;top:0;background:#f6f6f6;padding:.5em 0;display:flex;gap:1em;align-items:center}
button{font-size:1em;padding:.4em 1em}
"""

_SCRIPT = """
const STUDY = JSON.parse(document.getElementById("study-data").textContent);
const KEY = "layercomposer-study/" + STUDY.study;
let chosen = {};
try { chosen = JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { chosen = {}; }
function render() {
  document.querySelectorAll(".item").forEach(item => {
    const c = chosen[item.dataset.canvas];
    item.querySelectorAll("figure").forEach(f => {
      f.classList.toggle("chosen", c !== undefined && Number(f.dataset.position) === c);
    });
  });
  document.getElementById("count").textContent =
    Object.keys(chosen).length + " / " + STUDY.items.length + " chosen";
}
document.querySelectorAll("figure").forEach(f => f.addEventListener("click", () => {
  chosen[f.closest(".item").dataset.canvas] = Number(f.dataset.position);
  try { localStorage.setItem(KEY, JSON.stringify(chosen)); } catch (e) {}
  render();
}));
function choicesJSON() {
  const choices = STUDY.items.filter(it => chosen[it.canvas] !== undefined).map(it => ({
    canvas: it.canvas, order: it.order, chosen: it.order[chosen[it.canvas]], position: chosen[it.canvas]}));
  return JSON.stringify({format: STUDY.format, study: STUDY.study, seed: STUDY.seed,
    saved: new Date().toISOString(), choices: choices}, null, 2);
}
document.getElementById("download").addEventListener("click", () => {
  const url = URL.createObjectURL(new Blob([choicesJSON()], {type: "application/json"}));
  const a = document.createElement("a");
  a.href = url; a.download = "choices.json"; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});
document.getElementById("reset").addEventListener("click", () => {
  if (confirm("Forget all choices on this page?")) { chosen = {}; localStorage.removeItem(KEY); render(); }
});
render();
"""


def build_study(results: str | os.PathLike[str], output: str | os.PathLike[str], seed: int = 0,
                link: bool = False, title: str | None = None) -> list[StudyItem]:
    """Write the study page for a results folder of `eval photos`; returns its items (in page order)."""
    out = Path(output)
    if out.suffix.lower() not in (".html", ".htm"):
        raise LayerComposerError(f"-o {output}: must be an .html file")
    if out.parent != Path() and not out.parent.is_dir():
        raise LayerComposerError(f"-o {output}: folder {out.parent} does not exist")
    items = study_items(results, seed)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    study_id = hashlib.sha256(json.dumps([[i.canvas, i.order] for i in items]).encode()).hexdigest()[:12]
    data = {"format": CHOICES_FORMAT, "study": study_id, "seed": seed,
            "items": [{"canvas": i.canvas, "order": i.order} for i in items]}
    page_title = html.escape(title or "Which picture is best?")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{page_title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{page_title}</h1>",
        "<p>For each prompt, click the picture that best shows the prompt with the people of the reference "
        "photos, looking natural. Then download your choices and send the file back.</p>",
        '<div id="bar"><button id="download">Download choices</button><span id="count"></span>'
        '<button id="reset">Reset</button></div>',
    ]
    for n, item in enumerate(items, 1):
        parts.append(f'<section class="item" data-canvas="{html.escape(item.canvas, quote=True)}">')
        parts.append(f"<h2>{n}.</h2>")
        if item.prompt:
            parts.append(f'<p class="prompt">Prompt: <q>{html.escape(item.prompt)}</q></p>')
        if item.references:
            parts.append('<div class="refs">People: ' + "".join(
                f'<img alt="reference" src="{_src(p, out.parent, link)}">' for p in item.references) + "</div>")
        parts.append('<div class="options">')
        for pos, path in enumerate(item.images):
            parts.append(f'<figure data-position="{pos}"><img alt="option {letters[pos % 26]}" '
                         f'src="{_src(path, out.parent, link)}"><figcaption>{letters[pos % 26]}</figcaption>'
                         "</figure>")
        parts.append("</div></section>")
    blob = json.dumps(data).replace("</", "<\\/")
    parts += [f'<script type="application/json" id="study-data">{blob}</script>',
              f"<script>{_SCRIPT}</script></body></html>"]
    write_atomic(out, ("\n".join(parts) + "\n").encode())
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)  # a page to share: the usual file mode, not the temporary file's 0600
    return items


# ----------------------------------------------------------------------------------------------------------
# Summary


def summarise_choices(paths: list[str | os.PathLike[str]]) -> dict[str, Any]:
    """Win rates per engine over one or more choices files (participants): wins / times shown."""
    shown: dict[str, int] = {}
    wins: dict[str, int] = {}
    total = 0
    for path in paths:
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except OSError as exc:
            raise LayerComposerError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise LayerComposerError(f"{path}: not JSON ({exc})") from None
        choices = doc.get("choices") if isinstance(doc, dict) else None
        if not isinstance(choices, list):
            raise LayerComposerError(f"{path}: no \"choices\" list (not a study choices file)")
        for i, c in enumerate(choices):
            ok = (isinstance(c, dict) and isinstance(c.get("order"), list) and c.get("chosen") in c["order"]
                  and all(isinstance(e, str) for e in c["order"]))
            if not ok:
                raise LayerComposerError(f"{path}: choices[{i}]: needs \"order\" (engine names) and \"chosen\" "
                                         "(one of them)")
            for engine in set(c["order"]):
                shown[engine] = shown.get(engine, 0) + 1
            wins[c["chosen"]] = wins.get(c["chosen"], 0) + 1
            total += 1
    if total == 0:
        raise LayerComposerError("no choices in " + ", ".join(str(p) for p in paths))
    engines = sorted(shown, key=lambda e: (-wins.get(e, 0) / shown[e], e))
    return {
        "choices": total,
        "engines": {e: {"wins": wins.get(e, 0), "shown": shown[e], "win_rate": wins.get(e, 0) / shown[e],
                        "share": wins.get(e, 0) / total} for e in engines},
    }


def format_summary(summary: dict[str, Any]) -> str:
    rows = summary["engines"]
    width = max([6, *(len(e) for e in rows)])
    lines = [f"{summary['choices']} choices",
             f"{'engine':<{width}}  {'wins':>5}  {'shown':>5}  {'win rate':>8}  {'share':>6}"]
    for engine, r in rows.items():
        lines.append(f"{engine:<{width}}  {r['wins']:>5}  {r['shown']:>5}  {100 * r['win_rate']:>7.1f}%  "
                     f"{100 * r['share']:>5.1f}%")
    return "\n".join(lines)
