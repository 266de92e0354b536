"""Contact sheet of a MAD-format dataset for eyeballing it: one row per class with a few training views followed
by one example of each defect type with its ground-truth mask outlined in red. Works on any MAD-layout folder
(generated, ring or hand-held, or real MAD), using Pillow only.

Usage::

    python -m pad_nerfstudio.synth.contact_sheet --data /tmp/synth_check --out /tmp/synth_check/sheet.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pad_nerfstudio.synth.defects import DEFECT_TYPES

OUTLINE = (230, 20, 20)


def class_folders(data: Path) -> list[Path]:
    """Sub-folders of ``data`` that look like MAD classes (they hold ``train/good``), sorted by name."""
    return sorted(path for path in Path(data).iterdir() if (path / "train" / "good").is_dir())


def outline_mask(image: Image.Image, mask: Image.Image, width: int = 1) -> Image.Image:
    """Copy of ``image`` with the boundary of the binary ``mask`` drawn in red."""
    inside = np.asarray(mask.convert("L").resize(image.size, Image.NEAREST)) > 127
    eroded = inside.copy()
    for _ in range(width):
        padded = np.pad(eroded, 1)
        eroded = eroded & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[inside & ~eroded] = OUTLINE
    return Image.fromarray(pixels)


RING_VIEWS = (35, 66, 108, 171)
"""Four training views of the 210-view ring grid from different rings and sides."""


def spread_views(folder: Path, count: int = 4) -> tuple[int, ...]:
    """Indices of ``count`` training views spread over a class's views (``RING_VIEWS`` for a 210-view ring grid;
    evenly spaced otherwise, e.g. one per loop of a hand-held capture)."""
    views = len(list((Path(folder) / "train" / "good").glob("*.png")))
    if views == 210:
        return RING_VIEWS
    return tuple(sorted({int(i * views / count) for i in range(count)}))


def make_contact_sheet(
    data: Path | str, out: Path | str, train_views: tuple[int, ...] | None = None, tile: int = 200
) -> Path:
    """Write the sheet to ``out``; ``train_views`` are training image indices (default: :func:`spread_views`).

    Example:
        >>> make_contact_sheet("/tmp/synth_check", "/tmp/synth_check/sheet.png")
    """
    folders = class_folders(Path(data))
    if not folders:
        raise FileNotFoundError(f"no class folders with train/good under {data}")
    label_height = 16
    columns = (len(train_views) if train_views else 4) + len(DEFECT_TYPES)
    sheet = Image.new("RGB", (columns * tile, len(folders) * (tile + label_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, folder in enumerate(folders):
        top = row * (tile + label_height)
        draw.text((4, top + 2), folder.name, fill=(0, 0, 0))
        tiles = []
        for index in train_views or spread_views(folder):
            path = folder / "train" / "good" / f"{index}.png"
            tiles.append((f"train {index}", Image.open(path).convert("RGB") if path.exists() else None))
        for kind in DEFECT_TYPES:
            image_path = folder / "test" / kind / "0.png"
            mask_path = folder / "ground_truth" / kind / "0_mask.png"
            if image_path.exists() and mask_path.exists():
                tiles.append((kind, outline_mask(Image.open(image_path), Image.open(mask_path))))
            else:
                tiles.append((kind, None))
        for column, (label, image) in enumerate(tiles):
            left = column * tile
            if image is not None:
                sheet.paste(image.resize((tile, tile), Image.LANCZOS), (left, top + label_height))
            # Column labels go inside the tile's (white) top-left corner, the header line holds the class name.
            draw.text((left + 3, top + label_height + 2), label, fill=(90, 90, 90))
    out = Path(out)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Contact sheet of a MAD-format dataset (training views + defects).")
    parser.add_argument("--data", type=Path, required=True, help="dataset root with one folder per class")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--tile", type=int, default=200, help="tile size in px")
    args = parser.parse_args(argv)
    print(make_contact_sheet(args.data, args.out, tile=args.tile))


if __name__ == "__main__":
    main()
