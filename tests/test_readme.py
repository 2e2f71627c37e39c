"""The README's front door: its results table is the results JSON rounded as shown, its links resolve, and it
stays short (issue 32)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"

IDENTITY_ROW = "unlocked characters: identity, top-1 among 40 identities (s.e.)"
LOCKED_ROW = "locked layers: PSNR against the target"
COLUMNS = ["layered model", "collage model", "naive pasting", "ceiling"]


def results_table(text: str) -> tuple[list[str], dict[str, list[str]]]:
    """The header and the rows (first cell -> the other cells) of the table in the README's Results section."""
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, body = cells[0], [row for row in cells[1:] if not set("".join(row)) <= set("-: ")]
    return header[1:], {row[0]: row[1:] for row in body}


def top1(engine: dict) -> str:
    """Identity as the README shows it: top-1 in percent, its standard error in points."""
    return f"{100 * engine['top1']:.0f}% ({100 * engine['se']:.0f})"


def db(value: float) -> str:
    return f"{value:.2f} dB"


def expected_rows() -> dict[str, list[str]]:
    identity = json.loads((RESULTS / "sprites.json").read_text())["summary"]["identity"]["engines"]
    locked = json.loads((RESULTS / "sprites.json").read_text())["summary"]["locked"]
    return {
        IDENTITY_ROW: [top1(identity["layered"]),
                       top1(identity["collage"]) if "collage" in identity else "n/a",
                       top1(identity["paste"]), top1(identity["vae"])],
        LOCKED_ROW: [db(locked["psnr"]), db(locked["collage"]["psnr_collage"]), "not measured",
                     db(locked["vae_ceiling"])],
    }


def test_results_table_is_the_results_json():
    header, rows = results_table(README.read_text())
    assert header == COLUMNS
    assert rows == expected_rows()


def test_results_table_counts_are_the_results_json():
    text = " ".join(README.read_text().split())
    sprites = json.loads((RESULTS / "sprites.json").read_text())
    identity = sprites
    cases, regions = identity["settings"]["scenes"], identity["summary"]["identity"]["regions"]
    assert f"Identity: {cases} cases, {regions} unlocked characters" in text
    assert identity["summary"]["identity"]["gallery"] == 40
    cases, regions = sprites["settings"]["scenes"], sprites["summary"]["locked"]["regions"]
    assert f"locked layers: {cases} cases, {regions} regions" in text


def test_results_table_check_catches_an_edit():
    text = README.read_text()
    for row, cells in expected_rows().items():
        for cell in cells:
            if cell[0].isdigit():
                edited = text.replace(f"| {cell} |", f"| {cell.replace(cell[0], str((int(cell[0]) + 1) % 10), 1)} |")
                assert edited != text
                assert results_table(edited)[1] != expected_rows(), (row, cell)


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.split()) <= 1200
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link) or link.startswith("#"):
            continue
        assert (ROOT / link.split("#", 1)[0]).exists(), link
