"""Face parsing on the foundation image: RetinaFace finds the faces, BiSeNet or ParseNet labels each one.

Everything here runs facexlib's networks, but never facexlib's ``init_*`` helpers: those call
``torch.load`` without ``weights_only`` (arbitrary pickle) and download when a file is missing. We build
the networks ourselves and load their weights from a directory the caller names (inside the WebUI:
``models/GFPGAN``, where ``parsing_parsenet.pth`` and ``detection_Resnet50_Final.pth`` often already are).

A missing or unreadable weight file, an absent facexlib or an image without faces is not an error of the
generation: :func:`parse_faces` then returns a :class:`ParseResult` whose ``reason`` says why, and the
caller falls back to attention masks.

Geometry (documented here once, tested in ``tests/test_parsing.py``):

- Faces are ordered left to right by the x of their box centre (ties: top to bottom), so that face
  index 0 is the leftmost face whatever the detector's scores were. ``faces="largest"`` picks the face
  with the largest box area.
- Each face box is enlarged to a square crop whose side is ``FACE_CROP_SCALE`` times the box's longer
  side, centred on the box centre raised by ``FACE_CROP_LIFT`` times the box height: hair and hats lie
  above and beside the tight detection box, and the parsers were trained on such loose crops
  (CelebAMask-HQ). Parts of the crop outside the image are filled by replicating the border pixels.
- The crop is resized to ``PARSE_SIZE`` (bilinear), parsed, and the label map is resized back to the
  crop (nearest) and pasted into image coordinates. Pixels outside every parsed crop get ``UNPARSED``
  (-1); 0 is the parser's own "background". Where crops of several faces overlap, a face's labels only
  overwrite pixels that no face before it (in the selected order) labelled as a part.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

# Label ids per parser. ParseNet follows the CelebAMask-HQ order; BiSeNet has its own (face-parsing.PyTorch's).
# Sources: xinntao/facexlib inference/inference_parsing.py (BiSeNet, "attributions" comment in
# vis_parsing_maps) and inference/inference_parsing_parsenet.py (ParseNet, same place).
PART_LABELS: dict[str, dict[str, int]] = {
    "bisenet": {
        "background": 0, "skin": 1, "l_brow": 2, "r_brow": 3, "l_eye": 4, "r_eye": 5, "eye_g": 6,
        "l_ear": 7, "r_ear": 8, "ear_r": 9, "nose": 10, "mouth": 11, "u_lip": 12, "l_lip": 13,
        "neck": 14, "neck_l": 15, "cloth": 16, "hair": 17, "hat": 18,
    },
    "parsenet": {
        "background": 0, "skin": 1, "nose": 2, "eye_g": 3, "l_eye": 4, "r_eye": 5, "l_brow": 6,
        "r_brow": 7, "l_ear": 8, "r_ear": 9, "mouth": 10, "u_lip": 11, "l_lip": 12, "hair": 13,
        "hat": 14, "ear_r": 15, "neck_l": 16, "neck": 17, "cloth": 18,
    },
}  # fmt: skip
PARSERS = tuple(PART_LABELS)
NUM_CLASSES = 19

WEIGHT_FILES = {
    "bisenet": "parsing_bisenet.pth",
    "parsenet": "parsing_parsenet.pth",
    "retinaface": "detection_Resnet50_Final.pth",
}
# The lighter RetinaFace, used when only it is present (the resnet50 file wins when both are).
MOBILE_RETINAFACE_FILE = "detection_mobilenet0.25_Final.pth"
# The URLs facexlib's init_parsing_model / init_detection_model use (facexlib 0.3.0).
WEIGHT_URLS = {
    "bisenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth",
    "parsenet": "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
    "retinaface": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
}

PARSE_SIZE = 512
# Input normalisation per parser, as in facexlib's inference scripts (RGB order).
_NORMALISATION = {
    "bisenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "parsenet": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
FACE_CROP_SCALE = 2.4
FACE_CROP_LIFT = 0.15
UNPARSED = -1
DEFAULT_CONF_THRESHOLD = 0.8
MIN_FACE_PX = 4

Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class ParseResult:
    """Outcome of :func:`parse_faces`.

    ``labels`` is an (H, W) int32 map in image coordinates (``UNPARSED`` = -1 outside every parsed crop),
    or None when parsing could not run; then ``reason`` says why (None on success). ``faces`` are the
    detection boxes (x1, y1, x2, y2, clipped to the image) of the parsed faces, ``regions`` the crops
    (x0, y0, x1, y1, possibly reaching outside the image) that were parsed, ``notes`` non-fatal remarks.
    """

    parser: str
    labels: np.ndarray | None = None
    faces: tuple[Box, ...] = ()
    regions: tuple[Region, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None and self.labels is not None

    def part_mask(self, parts: Iterable[str]) -> np.ndarray:
        """Boolean (H, W) mask of the pixels labelled as any of ``parts`` (names of ``PART_LABELS``)."""
        if not self.ok:
            raise ValueError(f"no face labels to take parts from: {self.reason}")
        ids = label_ids(self.parser, parts)
        return np.isin(self.labels, ids)


def label_ids(parser: str, parts: Iterable[str]) -> list[int]:
    """The label ids of the named parts for ``parser``."""
    table = PART_LABELS.get(parser)
    if table is None:
        raise ValueError(f"parser must be one of {', '.join(PARSERS)}; got {parser!r}")
    parts = [parts] if isinstance(parts, str) else list(parts)
    unknown = [part for part in parts if part not in table]
    if unknown:
        raise ValueError(f"parts: unknown part name(s) {unknown}; accepted: {', '.join(table)}")
    return [table[part] for part in parts]


# ---------------------------------------------------------------------------------------------------
# Geometry: face order and selection, crops, paste-back.


def order_faces(boxes: Sequence[Box]) -> list[int]:
    """Indices of ``boxes`` ordered left to right by box centre x, then top to bottom."""
    return sorted(range(len(boxes)), key=lambda i: (boxes[i][0] + boxes[i][2], boxes[i][1] + boxes[i][3]))


def select_faces(boxes: Sequence[Box], faces: str | Sequence[int]) -> tuple[list[Box], list[str]]:
    """The boxes ``faces`` asks for, in their left-to-right order, and notes on indices not found.

    ``faces``: ``"all"``, ``"largest"`` or a sequence of indices into the left-to-right order. ``"all"``
    leaves out faces far smaller than the largest and keeps at most ``MAX_FACES`` (see the constants).
    """
    ordered = [boxes[i] for i in order_faces(boxes)]
    if faces == "all":
        return _prominent(ordered)
    if faces == "largest":
        if not ordered:
            return [], []
        return [max(ordered, key=_area)], []
    indices = _validate_face_indices(faces)
    missing = [i for i in indices if i >= len(ordered)]
    notes = [f"faces: index {i} asked for but only {len(ordered)} face(s) found" for i in missing]
    return [ordered[i] for i in indices if i < len(ordered)], notes


# faces="all": a crowd gives hundreds of detections down to a few pixels (269 in one real photo, minutes of
# parsing on a CPU); faces whose box side is under a quarter of the largest one's are background, and the
# parse of more than a handful of faces costs more than the cure.
MIN_FACE_AREA_RATIO = 1 / 16
MAX_FACES = 8


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _prominent(ordered: list[Box]) -> tuple[list[Box], list[str]]:
    """The faces of ``ordered`` worth parsing, in the same order, and notes on those left out."""
    if not ordered:
        return [], []
    largest = max(_area(box) for box in ordered)
    kept = [box for box in ordered if _area(box) >= MIN_FACE_AREA_RATIO * largest]
    notes = []
    if len(kept) < len(ordered):
        notes.append(f"faces: {len(ordered) - len(kept)} small face(s) not parsed (under a quarter of the"
                     " largest face's size)")
    if len(kept) > MAX_FACES:
        notes.append(f"faces: only the {MAX_FACES} largest of {len(kept)} faces parsed")
        biggest = set(sorted(range(len(kept)), key=lambda i: -_area(kept[i]))[:MAX_FACES])
        kept = [box for i, box in enumerate(kept) if i in biggest]
    return kept, notes


def _validate_face_indices(faces: object) -> tuple[int, ...]:
    accepted = '"all", "largest" or a tuple of face indices (0 = leftmost face)'
    if isinstance(faces, str) or not isinstance(faces, Sequence):
        raise ValueError(f"faces must be {accepted}; got {faces!r}")
    if not faces or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in faces):
        raise ValueError(f"faces must be {accepted}; got {faces!r}")
    return tuple(dict.fromkeys(faces))


def clip_box(box: Sequence[float], image_hw: tuple[int, int]) -> Box | None:
    """``box`` clipped to the image, or None when it is not finite or smaller than ``MIN_FACE_PX``."""
    height, width = image_hw
    if not all(math.isfinite(v) for v in box[:4]):
        return None
    x1, y1 = min(max(box[0], 0.0), width), min(max(box[1], 0.0), height)
    x2, y2 = min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)
    if x2 - x1 < MIN_FACE_PX or y2 - y1 < MIN_FACE_PX:
        return None
    return (float(x1), float(y1), float(x2), float(y2))


def face_region(box: Box) -> Region:
    """The square crop (x0, y0, x1, y1) parsed for a face box; it may reach outside the image."""
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    side = max(1, math.floor(FACE_CROP_SCALE * max(box_w, box_h) + 0.5))
    centre_x = (x1 + x2) / 2
    centre_y = (y1 + y2) / 2 - FACE_CROP_LIFT * box_h
    x0 = math.floor(centre_x - side / 2 + 0.5)
    y0 = math.floor(centre_y - side / 2 + 0.5)
    return (x0, y0, x0 + side, y0 + side)


def crop_region(image: np.ndarray, region: Region) -> np.ndarray:
    """The pixels of ``region``; the part outside the image repeats the nearest border pixel."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = region
    inner = image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if inner.size == 0:
        raise ValueError(f"region {region} lies outside the {width}x{height} image")
    pad = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if not any(pad):
        return inner.copy()
    return cv2.copyMakeBorder(inner, *pad, borderType=cv2.BORDER_REPLICATE)


def paste_labels(canvas: np.ndarray, region_labels: np.ndarray, region: Region) -> None:
    """Write ``region_labels`` (the labels of ``region``) into ``canvas`` in place.

    Only pixels that hold no part yet (``UNPARSED`` or background 0) are written, so an earlier face's
    parts are never covered by a later face's crop.
    """
    height, width = canvas.shape
    x0, y0, x1, y1 = region
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    target = canvas[cy0:cy1, cx0:cx1]
    source = region_labels[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    free = target <= 0
    target[free] = source[free]


# ---------------------------------------------------------------------------------------------------
# Weights: lookup, safe loading, optional download, cache.

_MODEL_CACHE: dict[tuple[str, str, str], torch.nn.Module] = {}
_CACHE_LOCK = threading.Lock()


class _WeightsUnavailable(Exception):
    """A weight file is missing or unreadable; the message is the user-facing reason."""


def free_models() -> int:
    """Drop every cached network (call after generation to give the memory back); returns how many."""
    with _CACHE_LOCK:
        count = len(_MODEL_CACHE)
        _MODEL_CACHE.clear()
    return count


def _file_names(name: str) -> list[str]:
    return [WEIGHT_FILES[name], MOBILE_RETINAFACE_FILE] if name == "retinaface" else [WEIGHT_FILES[name]]


def weights_file(name: str, models_dir: str | Path) -> Path | None:
    """The file :func:`parse_faces` loads for ``name`` (a ``WEIGHT_FILES`` key) from ``models_dir``.

    Each file name is also tried with a ``.safetensors`` suffix; for RetinaFace the resnet50 file wins
    over the mobile0.25 one. None when none is there.
    """
    if name not in WEIGHT_FILES:
        raise ValueError(f"name must be one of {', '.join(WEIGHT_FILES)}; got {name!r}")
    for file_name in _file_names(name):
        pickle_file = Path(models_dir) / file_name
        for candidate in (pickle_file, pickle_file.with_suffix(".safetensors")):
            if candidate.is_file():
                return candidate
    return None


def _weights_path(name: str, models_dir: Path, allow_download: bool) -> Path:
    found = weights_file(name, models_dir)
    if found is not None:
        return found
    wanted = " or ".join(_file_names(name))
    if not allow_download:
        raise _WeightsUnavailable(f"{wanted} not found in {models_dir}; put it there or allow downloads")
    try:
        from facexlib.utils import misc as facexlib_misc

        models_dir.mkdir(parents=True, exist_ok=True)
        path = facexlib_misc.load_file_from_url(url=WEIGHT_URLS[name], save_dir=str(models_dir))
    except Exception as error:
        reason = f"could not download {WEIGHT_FILES[name]} to {models_dir}: {error}"
        raise _WeightsUnavailable(reason) from error
    return Path(path)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, without unpickling anything but plain tensors and containers."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise _WeightsUnavailable(f"could not read {path} as plain weights: {error}") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _WeightsUnavailable(f"{path} is not a state dict of tensors")
    # Checkpoints saved from DataParallel prefix every key with "module." (facexlib strips it too).
    return {key.removeprefix("module."): value for key, value in state.items()}


def _build_network(name: str, path: Path, device: torch.device) -> torch.nn.Module:
    state = _read_state_dict(path)
    if name == "bisenet":
        from facexlib.parsing.bisenet import BiSeNet

        network = BiSeNet(num_class=NUM_CLASSES)
    elif name == "parsenet":
        from facexlib.parsing.parsenet import ParseNet

        network = ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, parsing_ch=NUM_CLASSES)
    else:
        from facexlib.detection.retinaface import RetinaFace

        backbone = "mobile0.25" if path.stem == Path(MOBILE_RETINAFACE_FILE).stem else "resnet50"
        # RetinaFace keeps its mean tensor and box scales on the device given here (not buffers that
        # .to() would move), so it must be built on the device it will run on.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained" deprecation
            network = RetinaFace(network_name=backbone, half=False, device=device)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise _WeightsUnavailable(f"{path} does not hold {name} weights: {error}") from error
    return network.to(device).eval()


def _load_network(name: str, models_dir: Path, device: torch.device, allow_download: bool) -> torch.nn.Module:
    path = _weights_path(name, models_dir, allow_download)
    key = (name, str(path.resolve()), str(device))
    with _CACHE_LOCK:
        cached = _MODEL_CACHE.get(key)
    if cached is not None:
        return cached
    network = _build_network(name, path, device)
    with _CACHE_LOCK:
        _MODEL_CACHE[key] = network
    return network


# ---------------------------------------------------------------------------------------------------
# Running the networks.


@contextlib.contextmanager
def _retinaface_device(device: torch.device):
    """Point facexlib's module-global ``device`` (facexlib < 0.3 reads it in detect_faces) at ``device``.

    facexlib 0.3.0 has no such global (the instance's ``device`` from the constructor is used) and this
    does nothing. Where it exists, the WebUI sets it for GFPGAN/CodeFormer, so it is restored afterwards.
    """
    from facexlib.detection import retinaface

    if not hasattr(retinaface, "device"):
        yield
        return
    previous = retinaface.device
    retinaface.device = device
    try:
        yield
    finally:
        retinaface.device = previous


def detect_faces(
    detector: torch.nn.Module, image_rgb: np.ndarray, conf_threshold: float, device: torch.device
) -> list[Box]:
    """RetinaFace boxes scoring above ``conf_threshold``, clipped to the image, degenerate ones dropped."""
    image_bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
    with torch.no_grad(), _retinaface_device(device):
        detections = detector.detect_faces(image_bgr, conf_threshold=conf_threshold)
    boxes = (clip_box(row[:4], image_rgb.shape[:2]) for row in np.asarray(detections).reshape(-1, 15))
    return [box for box in boxes if box is not None]


def parse_crop(
    network: torch.nn.Module, parser: str, crop_rgb: np.ndarray, device: torch.device
) -> np.ndarray:
    """Label map (int32) of one RGB crop, at the crop's own size."""
    crop_h, crop_w = crop_rgb.shape[:2]
    resized = cv2.resize(crop_rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
    mean, std = _NORMALISATION[parser]
    pixels = torch.from_numpy(resized.astype(np.float32) / 255.0).permute(2, 0, 1)
    pixels = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        # Both facexlib parsers return a tuple whose first item is the (1, 19, S, S) logits.
        logits = network(pixels.unsqueeze(0).to(device))[0]
    labels = logits[0].argmax(0).to(torch.int32).cpu().numpy()
    return cv2.resize(labels, (crop_w, crop_h), interpolation=cv2.INTER_NEAREST)


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(
            f"image must be a PIL image or an RGB uint8 array of shape (H, W, 3); "
            f"got dtype {array.dtype}, shape {array.shape}"
        )
    return array


def parse_faces(
    image: Image.Image | np.ndarray,
    *,
    parser: str,
    models_dir: str | Path,
    faces: str | Sequence[int] = "all",
    device: str | torch.device = "cpu",
    allow_download: bool = False,
    detect: bool = True,
    conf_threshold: float = DEFAULT_CONF_THRESHOLD,
) -> ParseResult:
    """Label the face parts of ``image`` (PIL, or an RGB uint8 array) with ``parser``.

    ``detect=False`` parses the whole image as one region (resized to ``PARSE_SIZE`` square, as facexlib's
    inference scripts do); otherwise faces come from RetinaFace with scores above ``conf_threshold`` and
    ``faces`` selects among them (see the module docstring). Weights are looked up in ``models_dir`` and
    downloaded there only when ``allow_download`` is true. Bad arguments raise ``ValueError``; missing
    weights, absent facexlib or no face give a result with ``reason`` set.
    """
    if parser == "none":
        return ParseResult(parser=parser, reason="face parser is set to none")
    if parser not in PART_LABELS:
        raise ValueError(f"parser must be one of {', '.join((*PARSERS, 'none'))}; got {parser!r}")
    if faces not in ("all", "largest"):
        _validate_face_indices(faces)
    if not 0.0 <= conf_threshold <= 1.0:
        raise ValueError(f"conf_threshold must be in [0, 1]; got {conf_threshold!r}")
    rgb = _as_rgb_array(image)
    device = torch.device(device)
    models_dir = Path(models_dir)
    try:
        import facexlib  # noqa: F401
    except ImportError:
        return ParseResult(parser=parser, reason="facexlib is not installed")

    height, width = rgb.shape[:2]
    try:
        network = _load_network(parser, models_dir, device, allow_download)
        if detect:
            detector = _load_network("retinaface", models_dir, device, allow_download)
            detected = detect_faces(detector, rgb, conf_threshold, device)
            if not detected:
                return ParseResult(parser=parser, reason="no face found")
            boxes, notes = select_faces(detected, faces)
            if not boxes:
                return ParseResult(parser=parser, reason="; ".join(notes), notes=tuple(notes))
            regions = [face_region(box) for box in boxes]
        else:
            boxes, notes = [(0.0, 0.0, float(width), float(height))], []
            regions = [(0, 0, width, height)]
    except _WeightsUnavailable as unavailable:
        return ParseResult(parser=parser, reason=str(unavailable))

    labels = np.full((height, width), UNPARSED, dtype=np.int32)
    for region in regions:
        paste_labels(labels, parse_crop(network, parser, crop_region(rgb, region), device), region)
    return ParseResult(
        parser=parser, labels=labels, faces=tuple(boxes), regions=tuple(regions), notes=tuple(notes)
    )
