"""Read attributes and identity traits back from an image of the world, by rules on its palette and layout.

Every reader looks at fixed places of the 128 px layout (a 64 px image is resized first) and picks the
nearest colour of the world's palette there, so it tolerates the blur of a small VAE. The readers are
checked against the world's own drawings (``tests/test_world.py``): on those they are exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

from . import world
from .world import CENTRE_X as X

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive-exclusive) in 128 px coordinates


def _as_layout(image: np.ndarray) -> np.ndarray:
    """uint8/float (H, W, 3) or (3, H, W) image in [0, 255] or [0, 1] -> float (128, 128, 3) in [0, 255]."""
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.max() <= 1.0 + 1e-6:
        array = array * 255
    if array.shape[:2] != (world.SIZE, world.SIZE):
        array = cv2.resize(array, (world.SIZE, world.SIZE), interpolation=cv2.INTER_LINEAR)
    return array


def _median(image: np.ndarray, *boxes: Box) -> np.ndarray:
    pixels = np.concatenate([image[y0:y1, x0:x1].reshape(-1, 3) for x0, y0, x1, y1 in boxes])
    return np.median(pixels, axis=0)


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> tuple[str, float]:
    distances = {name: float(np.linalg.norm(colour - np.array(rgb))) for name, rgb in palette.items()}
    name = min(distances, key=distances.get)
    return name, distances[name]


def _share(image: np.ndarray, box: Box, colour: tuple[int, int, int], tolerance: float = 60.0) -> float:
    x0, y0, x1, y1 = box
    pixels = image[y0:y1, x0:x1].reshape(-1, 3)
    return float((np.linalg.norm(pixels - np.array(colour), axis=1) < tolerance).mean())


TEMPLES: tuple[Box, Box] = ((X - 31, 48, X - 28, 58), (X + 28, 48, X + 31, 58))
BESIDE_NECK: tuple[Box, Box] = ((X - 30, 90, X - 22, 98), (X + 22, 90, X + 30, 98))
HAT_CROWN: Box = (X - 14, 28, X + 14, 36)
BRIDGE: Box = (X - 2, world.EYE_Y - 1, X + 3, world.EYE_Y + 2)
FRAME_TOPS: tuple[Box, Box] = (
    (X - world.EYE_DX - 2, world.EYE_Y - 9, X - world.EYE_DX + 3, world.EYE_Y - 7),
    (X + world.EYE_DX - 2, world.EYE_Y - 9, X + world.EYE_DX + 3, world.EYE_Y - 7),
)
MOUTH: Box = (X - 8, world.MOUTH_Y + 3, X + 9, world.MOUTH_Y + 7)
NOSE: Box = (X - 4, 68, X + 5, 76)
IRISES: tuple[Box, Box] = (
    (X - world.EYE_DX - 1, world.EYE_Y - 1, X - world.EYE_DX + 2, world.EYE_Y + 2),
    (X + world.EYE_DX - 1, world.EYE_Y - 1, X + world.EYE_DX + 2, world.EYE_Y + 2),
)


def _cheek(side: int) -> Box:
    x = X + side * world.CHEEK_DX
    return (x - 1, world.CHEEK_Y - 1, x + 2, world.CHEEK_Y + 2)


@dataclass(frozen=True)
class Reading:
    """What the readers see in one image."""

    hair_colour: str
    hair_length: str
    glasses: bool
    hat: bool
    earrings: bool
    smiling: bool
    face: str
    skin: str
    eyes: str
    mark: str

    def attribute(self, name: str) -> object:
        return getattr(self, name)


def read(image: np.ndarray) -> Reading:
    """Attributes and identity traits of one image of the world."""
    img = _as_layout(image)
    hair_colour, _ = _nearest(_median(img, *TEMPLES), world.HAIR_COLOURS)
    neck_side = _median(img, *BESIDE_NECK)
    background = np.linalg.norm(neck_side - np.array(world.BACKGROUND))
    hair_length = "long" if background > 50 else "short"
    skin_colour = _median(img, NOSE)
    skin, _ = _nearest(skin_colour, world.SKIN_TONES)
    skin_luma = float(skin_colour.mean())
    frame_luma = float(np.mean([_median(img, box).mean() for box in (BRIDGE, *FRAME_TOPS)]))
    glasses = skin_luma - frame_luma > 12
    hat = _share(img, HAT_CROWN, world.HAT) > 0.5
    earrings = _earrings(img)
    smiling = _share_nearest(img, MOUTH, {"skin": skin_colour, "lips": world.LIPS, "teeth": world.TEETH}, "skin") < 0.85
    eyes, _ = _nearest(_median(img, *IRISES), world.EYE_COLOURS)
    marks = {side: float(skin_colour.mean() - _median(img, _cheek(sign)).mean())
             for side, sign in (("left", -1), ("right", 1))}  # fmt: skip
    darker = max(marks, key=marks.get)
    mark = darker if marks[darker] > 8 else "none"
    return Reading(hair_colour, hair_length, glasses, hat, earrings, smiling, _face(img, skin_colour), skin, eyes, mark)


def _earrings(img: np.ndarray) -> bool:
    """Gold at the ear lobe of any face width (blue channel low, red and green high)."""
    found = 0
    for side in (-1, 1):
        best = 0.0
        for half_width in world.FACE_HALF_WIDTHS.values():
            x = X + side * (half_width + 1)
            best = max(best, _share(img, (x - 2, world.EARRING_Y - 2, x + 3, world.EARRING_Y + 3), world.GOLD, 70))
        found += best > 0.4
    return found == 2


def _share_nearest(img: np.ndarray, box: Box, palette: dict[str, object], name: str) -> float:
    """Share of the pixels of ``box`` whose nearest colour of ``palette`` is ``name``."""
    x0, y0, x1, y1 = box
    pixels = img[y0:y1, x0:x1].reshape(-1, 1, 3)
    colours = np.array([np.asarray(c, dtype=np.float64) for c in palette.values()])[None]
    nearest = np.linalg.norm(pixels - colours, axis=2).argmin(axis=1)
    return float((nearest == list(palette).index(name)).mean())


FACE_ROW_DY = 20  # below the ears and earrings, beside the chin


def _face(img: np.ndarray, skin_colour: np.ndarray) -> str:
    """Face shape from probes on a row below the ears, half-way between the world's face widths there:
    the widest shape whose probe still sees skin (nearest of skin, background and the hair colours)."""
    y = world.FACE_CENTRE_Y + FACE_ROW_DY
    scale = np.sqrt(1 - (FACE_ROW_DY / world.FACE_HALF_HEIGHT) ** 2)
    widths = sorted(world.FACE_HALF_WIDTHS.items(), key=lambda item: item[1])
    palette = {"skin": skin_colour, "background": world.BACKGROUND, **world.HAIR_COLOURS, "shirt": world.SHIRT}
    shape = widths[0][0]
    for (_, narrower), (name, width) in itertools.pairwise(widths):
        probe = round((narrower + width) / 2 * scale)
        boxes = [(X + side * probe - 1, y - 1, X + side * probe + 1, y + 2) for side in (-1, 1)]
        if np.mean([_share_nearest(img, box, palette, "skin") for box in boxes]) > 0.5:
            shape = name
    return shape


ATTRIBUTES = ("hair_colour", "hair_length", "glasses", "hat", "earrings", "smiling")


def attribute_scores(reading: Reading, wanted: dict[str, object]) -> dict[str, bool]:
    """Per requested attribute: does the image show it (``wanted``: Attributes field -> value)."""
    return {name: reading.attribute(name) == value for name, value in wanted.items()}


def identity_fidelity(reading: Reading, identity: world.Identity = world.SUBJECT) -> float:
    """Share of the identity's traits the image shows (face shape, skin tone, eye colour, mark)."""
    return float(np.mean([getattr(reading, trait) == getattr(identity, trait) for trait in world.Identity.TRAITS]))
