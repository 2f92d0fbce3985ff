"""The image files of a folder, sorted by relative path, as every folder baseline lists them."""

from pathlib import Path

SUFFIXES = {".png", ".jpg", ".jpeg"}


def image_files(folder: str) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in SUFFIXES)
