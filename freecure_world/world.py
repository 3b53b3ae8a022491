"""A procedural portrait world: heads drawn by code, with identity traits and prompt attributes.

Every portrait is a head on a fixed 128 x 128 layout (centred, frontal), so the attribute readers in
``freecure_world.metrics`` can look at fixed places. *Identity traits* (face shape, skin tone, eye colour,
a mole) never appear in captions: to the base model they are noise, as a face is to "a person". *Prompt
attributes* (hair colour and length, glasses, hat, earrings, smiling or neutral) are named in WebUI-style
captions. ``render`` also returns the ground-truth segmentation: the visible pixels of each element.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import cv2
import numpy as np

SIZE = 128
CENTRE_X = SIZE // 2

BACKGROUND = (200, 210, 222)
SHIRT = (70, 80, 130)
LIPS = (150, 35, 45)
TEETH = (245, 245, 240)
FRAMES = (20, 20, 24)
HAT = (40, 135, 70)
GOLD = (235, 175, 20)
MOLE = (60, 35, 25)
SCLERA = (250, 250, 250)

SKIN_TONES = {"pale": (240, 210, 190), "tan": (210, 160, 120), "brown": (160, 105, 70), "dark": (100, 62, 42)}
EYE_COLOURS = {"blue": (50, 105, 215), "green": (45, 160, 70), "brown": (110, 65, 30)}
FACE_HALF_WIDTHS = {"narrow": 19, "medium": 23, "wide": 27}
MARKS = ("none", "left", "right")  # a mole on the left or right cheek (image left/right)
HAIR_COLOURS = {"black": (30, 28, 32), "blonde": (235, 215, 150), "red": (195, 55, 25), "blue": (50, 90, 205)}
HAIR_LENGTHS = ("short", "long")

# Layout (pixels of the 128 x 128 image).
FACE_CENTRE_Y, FACE_HALF_HEIGHT = 66, 29
HAIR_CENTRE_Y, HAIR_HALF_WIDTH, HAIR_HALF_HEIGHT = 58, 32, 30
LONG_HAIR_BOTTOM = 110
EYE_Y, EYE_DX = 62, 10
MOUTH_Y = 82
CHEEK_Y, CHEEK_DX = 75, 14
EAR_Y = 68
EARRING_Y = 76

# Segmentation labels (visible pixels after drawing order).
LABELS = ("background", "shirt", "neck", "hair", "skin", "ears", "eyes", "mouth", "glasses", "hat", "earrings")
LABEL = {name: index for index, name in enumerate(LABELS)}


@dataclass(frozen=True)
class Identity:
    face: str = "medium"
    skin: str = "tan"
    eyes: str = "brown"
    mark: str = "none"

    TRAITS = ("face", "skin", "eyes", "mark")


@dataclass(frozen=True)
class Attributes:
    hair_colour: str = "black"
    hair_length: str = "short"
    glasses: bool = False
    hat: bool = False
    earrings: bool = False
    smiling: bool = False


@dataclass(frozen=True)
class Portrait:
    identity: Identity
    attributes: Attributes


# The identity of the LoRA: its training images all show it with its usual look (the default attributes).
SUBJECT = Identity(face="wide", skin="brown", eyes="green", mark="right")
SUBJECT_LOOK = Attributes()
TRIGGER = "ohwx"
CLASS_WORD = "person"


def random_identity(rng: random.Random) -> Identity:
    return Identity(
        face=rng.choice(list(FACE_HALF_WIDTHS)),
        skin=rng.choice(list(SKIN_TONES)),
        eyes=rng.choice(list(EYE_COLOURS)),
        mark=rng.choice(MARKS),
    )


def random_attributes(rng: random.Random) -> Attributes:
    return Attributes(
        hair_colour=rng.choice(list(HAIR_COLOURS)),
        hair_length=rng.choice(HAIR_LENGTHS),
        glasses=rng.random() < 0.5,
        hat=rng.random() < 0.5,
        earrings=rng.random() < 0.5,
        smiling=rng.random() < 0.5,
    )


def random_portrait(rng: random.Random) -> Portrait:
    return Portrait(random_identity(rng), random_attributes(rng))


def attribute_phrases(attributes: Attributes) -> dict[str, str]:
    """The caption phrase of each prompt attribute that is present (hair always is)."""
    phrases = {"hair": f"{attributes.hair_length} {attributes.hair_colour} hair"}
    for name in ("glasses", "hat", "earrings"):
        if getattr(attributes, name):
            phrases[name] = name
    if attributes.smiling:
        phrases["expression"] = "smiling"
    return phrases


def prompt(phrases: list[str], subject: str = CLASS_WORD) -> str:
    """WebUI-style prompt: ``photo of <subject>, phrase, phrase, ...``."""
    return ", ".join([f"photo of {subject}", *phrases])


def caption(portrait: Portrait, rng: random.Random | None = None) -> str:
    """A training caption: every present attribute named, in a random order when ``rng`` is given; the
    hair colour or length is left out now and then, so that a prompt may leave them to chance."""
    attributes = portrait.attributes
    phrases = attribute_phrases(attributes)
    if rng is not None:
        drop = rng.random()
        if drop < 0.1:
            phrases["hair"] = f"{attributes.hair_colour} hair"
        elif drop < 0.2:
            phrases["hair"] = f"{attributes.hair_length} hair"
        order = list(phrases.values())
        rng.shuffle(order)
        return prompt(order)
    return prompt(list(phrases.values()))


def face_half_width(identity: Identity) -> int:
    return FACE_HALF_WIDTHS[identity.face]


def render(portrait: Portrait) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 (128, 128, 3), segmentation int (128, 128) of ``LABELS``) of one portrait."""
    identity, attributes = portrait.identity, portrait.attributes
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = BACKGROUND
    labels = np.zeros((SIZE, SIZE), np.int64)
    skin = SKIN_TONES[identity.skin]
    hair = HAIR_COLOURS[attributes.hair_colour]
    face_w = face_half_width(identity)

    def draw(label: str, colour: tuple[int, int, int], paint) -> None:
        layer = np.zeros((SIZE, SIZE), np.uint8)
        paint(layer)
        on = layer > 0
        image[on] = colour
        labels[on] = LABEL[label]

    def ellipse(centre, axes, thickness=-1, angles=(0, 360)):
        return lambda layer: cv2.ellipse(layer, centre, axes, 0, angles[0], angles[1], 255, thickness, cv2.LINE_8)

    def rect(x0, y0, x1, y1):
        return lambda layer: cv2.rectangle(layer, (x0, y0), (x1, y1), 255, -1)

    if attributes.hair_length == "long":
        left, right = CENTRE_X - HAIR_HALF_WIDTH, CENTRE_X + HAIR_HALF_WIDTH
        draw("hair", hair, rect(left, HAIR_CENTRE_Y, right, LONG_HAIR_BOTTOM))
    draw("shirt", SHIRT, ellipse((CENTRE_X, 132), (46, 26)))
    if attributes.hair_length == "long":  # long hair falls over the shoulders, beside the neck
        draw("hair", hair, rect(CENTRE_X - HAIR_HALF_WIDTH, 100, CENTRE_X - 14, LONG_HAIR_BOTTOM))
        draw("hair", hair, rect(CENTRE_X + 14, 100, CENTRE_X + HAIR_HALF_WIDTH, LONG_HAIR_BOTTOM))
    draw("neck", skin, rect(CENTRE_X - 9, 88, CENTRE_X + 9, 108))
    draw("hair", hair, ellipse((CENTRE_X, HAIR_CENTRE_Y), (HAIR_HALF_WIDTH, HAIR_HALF_HEIGHT)))
    for side in (-1, 1):
        draw("ears", skin, ellipse((CENTRE_X + side * (face_w + 1), EAR_Y), (4, 7)))
    draw("skin", skin, ellipse((CENTRE_X, FACE_CENTRE_Y), (face_w, FACE_HALF_HEIGHT)))
    # Fringe: the hair covers the top of the forehead.
    draw("hair", hair, ellipse((CENTRE_X, HAIR_CENTRE_Y - 14), (face_w + 2, 14), angles=(180, 360)))
    for side in (-1, 1):
        centre = (CENTRE_X + side * EYE_DX, EYE_Y)
        draw("eyes", SCLERA, ellipse(centre, (6, 4)))
        draw("eyes", EYE_COLOURS[identity.eyes], lambda layer, c=centre: cv2.circle(layer, c, 3, 255, -1))
    if identity.mark != "none":
        side = -1 if identity.mark == "left" else 1
        draw("skin", MOLE, lambda layer: cv2.circle(layer, (CENTRE_X + side * CHEEK_DX, CHEEK_Y), 3, 255, -1))
    if attributes.smiling:
        draw("mouth", LIPS, ellipse((CENTRE_X, MOUTH_Y), (10, 7), angles=(0, 180)))
        draw("mouth", TEETH, rect(CENTRE_X - 8, MOUTH_Y, CENTRE_X + 8, MOUTH_Y + 2))
    else:
        draw("mouth", LIPS, rect(CENTRE_X - 7, MOUTH_Y + 1, CENTRE_X + 7, MOUTH_Y + 2))
    if attributes.glasses:
        def frames(layer: np.ndarray) -> None:
            for side in (-1, 1):
                cv2.circle(layer, (CENTRE_X + side * EYE_DX, EYE_Y), 8, 255, 2)
                cv2.line(layer, (CENTRE_X + side * (EYE_DX + 8), EYE_Y), (CENTRE_X + side * face_w, EYE_Y - 2), 255, 2)
            cv2.line(layer, (CENTRE_X - 2, EYE_Y), (CENTRE_X + 2, EYE_Y), 255, 2)

        draw("glasses", FRAMES, frames)
    if attributes.hat:
        draw("hat", HAT, ellipse((CENTRE_X, 40), (24, 16), angles=(180, 360)))
        draw("hat", HAT, rect(CENTRE_X - 36, 38, CENTRE_X + 36, 44))
    if attributes.earrings:
        for side in (-1, 1):
            x = CENTRE_X + side * (face_w + 1)
            draw("earrings", GOLD, lambda layer, x=x: cv2.circle(layer, (x, EARRING_Y), 4, 255, -1))
    return image, labels


ATTRIBUTE_LABELS = {"hair": ("hair",), "glasses": ("glasses",), "hat": ("hat",), "earrings": ("earrings",)}


def oracle_mask(portrait: Portrait, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Bool (128, 128): where the world draws the regional attributes ``names`` on ``portrait``."""
    _, labels = render(portrait)
    wanted = [LABEL[label] for name in names for label in ATTRIBUTE_LABELS[name]]
    return np.isin(labels, wanted)


def with_attributes(identity: Identity, **values: object) -> Portrait:
    return Portrait(identity, replace(SUBJECT_LOOK, **values))
