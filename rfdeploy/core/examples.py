"""The example image shipped with the package (public domain), for the quick start and bench."""

from pathlib import Path


def example_image() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
