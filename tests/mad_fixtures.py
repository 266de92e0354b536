"""Tiny MAD-layout class folders written on the fly for dataparser tests (content is irrelevant)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def look_at_pose(azimuth_deg: float, elevation_deg: float, radius: float = 4.0) -> np.ndarray:
    """OpenGL camera-to-world looking at the origin, world up +z (MAD convention)."""
    az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
    position = radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    back = position / np.linalg.norm(position)  # camera +z points away from the target
    right = np.cross([0.0, 0.0, 1.0], back)
    right = right / np.linalg.norm(right) if np.linalg.norm(right) > 1e-6 else np.array([1.0, 0.0, 0.0])
    up = np.cross(back, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, back, position
    return pose


def write_image(path: Path, size: int, seed: int, rgba: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = 4 if rgba else 3
    pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    if rgba:
        pixels[..., 3] = 0
        pixels[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, 3] = 255
    Image.fromarray(pixels).save(path)


def make_mad_class(
    root: Path,
    name: str = "01Gorilla",
    n_train: int = 12,
    size: int = 16,
    test_counts: dict[str, int] | None = None,
    rgba: bool = False,
    suffix: bool = True,
) -> Path:
    """Write a MAD-Sim style class folder and return it."""
    test_counts = test_counts if test_counts is not None else {"good": 3, "Burrs": 2, "Stains": 12}
    class_dir = root / name
    frames = []
    for index in range(n_train):
        write_image(class_dir / "train" / "good" / f"{index}.png", size, index, rgba)
        pose = look_at_pose(360.0 * index / n_train, 30.0 if index % 2 else -30.0)
        file_path = f"train/good/{index}" + (".png" if suffix else "")
        frames.append({"file_path": file_path, "transform_matrix": pose.tolist()})
    (class_dir / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.6911, "frames": frames}))
    for defect_type, count in test_counts.items():
        for index in range(count):
            write_image(class_dir / "test" / defect_type / f"{index}.png", size, 1000 + index, rgba)
            if defect_type != "good":
                mask = np.zeros((size, size), dtype=np.uint8)
                mask[index % size, :] = 255
                mask_path = class_dir / "ground_truth" / defect_type / f"{index}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(mask_path)
    return class_dir


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """Write a 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count); PIL cannot write these."""
    import struct
    import zlib

    pixels = np.asarray(pixels, dtype=">u2")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )
