"""Draw docs/images/real-findings.png: located anatomy and each simulated finding on held-out real films.

    python scripts/real_data/make_figure.py --backgrounds DIR [--out docs/images/real-findings.png]

For a reader (a radiologist) to check that the located regions and the simulated findings sit where they should.
Each film gets two rows: the located anatomy (red: right lung, green: left lung, yellow: heart box, cyan: domes,
magenta: costophrenic angles, blue: midline) and each finding at one severity; below, each finding's signed change
(follow-up minus film; white = denser). Films from the test split (PA and AP), images at 256 px, rendered at the
films' 512 px as in the dataset. The films are NIH ChestX-ray14 images (see NOTICE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.data.anatomy import AnatomyError, ChestAnatomy, locate_anatomy, resize  # noqa: E402
from inference.data.dataset import RealFilm, load_backgrounds  # noqa: E402
from inference.data.findings import FindingSite  # noqa: E402
from inference.data.phantom import Findings  # noqa: E402
from inference.data.real_findings import prepare_base, render  # noqa: E402

TILE = 256
FINDINGS = ((FindingSite("effusion", "right"), 2, "right effusion, moderate"),
            (FindingSite("cardiomegaly"), 3, "cardiomegaly, severe"),
            (FindingSite("pneumothorax", "left"), 3, "left pneumothorax, large"),
            (FindingSite("consolidation", "right", "right_lower"), 2, "consolidation R lower, moderate"),
            (FindingSite("oedema"), 3, "oedema, severe"))
SEED = 11


def overlay(image: np.ndarray, anatomy: ChestAnatomy) -> np.ndarray:
    """The film at TILE px in RGB with the located regions drawn on it."""
    rgb = np.repeat(resize(image, TILE)[..., None], 3, axis=2)
    for lung, colour in ((anatomy.right, (1.0, 0.2, 0.2)), (anatomy.left, (0.2, 1.0, 0.2))):
        mask = anatomy.lung_mask(lung.side, TILE)
        rgb[mask & ~ndimage.binary_erosion(mask)] = colour
        for (x, y), mark in ((lung.dome, (0.0, 1.0, 1.0)), (lung.costophrenic, (1.0, 0.0, 1.0))):
            cx, cy = int(x * TILE), int(y * TILE)
            rgb[max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3] = mark
    x0, y0, x1, y1 = (min(int(v * TILE), TILE - 1) for v in anatomy.heart)
    rgb[y0:y1 + 1, [x0, x1]] = rgb[[y0, y1], x0:x1 + 1] = (1.0, 0.9, 0.0)
    rgb[:, min(int(anatomy.midline * TILE), TILE - 1)] = (0.3, 0.4, 1.0)
    return rgb


def film_rows(backgrounds: Path, film: RealFilm, anatomy: ChestAnatomy) -> tuple[list[np.ndarray], list[np.ndarray]]:
    base = prepare_base(np.asarray(Image.open(backgrounds / film.file)), anatomy)
    images, changes = [overlay(base.image, anatomy)], [np.repeat(resize(base.image, TILE)[..., None], 3, axis=2)]
    for site, severity, _ in FINDINGS:
        follow, _ = render(base, site.with_severity(Findings(), severity), SEED)
        images.append(np.repeat(resize(follow, TILE)[..., None], 3, axis=2))
        change = np.clip(0.5 + 2.0 * resize(follow - base.image, TILE), 0, 1)
        changes.append(np.repeat(change[..., None], 3, axis=2))
    return images, changes


def held_out_films(backgrounds: Path, count: int) -> list[tuple[RealFilm, ChestAnatomy]]:
    """The first test-split films whose anatomy is located, PA first then AP."""
    chosen: list[tuple[RealFilm, ChestAnatomy]] = []
    films = [f for f in load_backgrounds(backgrounds) if f.split == "test"]
    for view, wanted in (("PA", count - 1), ("AP", 1)):
        for film in (f for f in films if f.view == view):
            if sum(f.view == view for f, _ in chosen) == wanted:
                break
            try:
                chosen.append((film, locate_anatomy(np.asarray(Image.open(backgrounds / film.file)))))
            except AnatomyError:
                continue
    return chosen


def _indexed(canvas: Image.Image) -> Image.Image:
    """8-bit indexed colour with every grey plus the overlay colours exactly: small, and the outlines survive."""
    colours = [(1.0, 0.2, 0.2), (0.2, 1.0, 0.2), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 0.9, 0.0), (0.3, 0.4, 1.0)]
    greys = [(v, v, v) for v in np.linspace(0, 1, 256 - len(colours))]
    palette = Image.new("P", (1, 1))
    palette.putpalette([round(c * 255) for colour in (*greys, *colours) for c in colour])
    return canvas.quantize(palette=palette, dither=Image.Dither.NONE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backgrounds", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "real-findings.png")
    parser.add_argument("--films", type=int, default=3)
    args = parser.parse_args(argv)
    titles = ["located anatomy", *(title for _, _, title in FINDINGS)]
    header = 16
    rows = []
    for film, anatomy in held_out_films(args.backgrounds, args.films):
        images, changes = film_rows(args.backgrounds, film, anatomy)
        rows += [np.concatenate(images, axis=1), np.concatenate(changes, axis=1)]
        print(f"{film.id} ({film.view}, CTR estimate {anatomy.ctr:.2f})")
    canvas = Image.new("RGB", (TILE * len(titles), header + TILE * len(rows)), "white")
    canvas.paste(Image.fromarray(np.round(np.concatenate(rows, axis=0) * 255).astype(np.uint8)), (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(titles):
        draw.text((i * TILE + 4, 2), title, fill="black")
    _indexed(canvas).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
