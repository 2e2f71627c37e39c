"""Write an occlusion-only run's section of the occlusion page from its JSON report, without evaluating again.

    python scripts/occlusion_page.py REPORT_JSON --command CMD --machine MACHINE [--results docs/OCCLUSION.md]

REPORT_JSON is an `eval sprites --occlusion-only --json` report; CMD and MACHINE are the command and the machine
that measured it (the JSON does not keep them). The page keeps the other subset's section, exactly as
`eval sprites --occlusion-only --results PAGE` does; run once per subset to write both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from layercomposer.eval.sprites import occlusion_markdown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="an `eval sprites --occlusion-only --json` report")
    parser.add_argument("--command", required=True, help="the command that measured it")
    parser.add_argument("--machine", required=True, help="the machine it ran on")
    parser.add_argument("--results", default="docs/OCCLUSION.md", help="the page (default docs/OCCLUSION.md)")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    if not report.get("settings", {}).get("occlusion_only"):
        parser.error(f"{args.report}: not an occlusion-only report")
    page = Path(args.results)
    old = page.read_text() if page.is_file() else None
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(occlusion_markdown(report, args.command, args.machine, old))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
