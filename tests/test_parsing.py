"""Face parsing: label tables, geometry, safe weight loading and the real networks end to end.

Weights are random (torch.manual_seed) and written by the tests; nothing here asserts what a trained
parser would see, only the mechanics: which label ids, which pixels, which files, which errors.
"""

from __future__ import annotations

import inspect
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from facexlib.detection.retinaface import RetinaFace
from facexlib.parsing.bisenet import BiSeNet
from facexlib.parsing.parsenet import ParseNet
from facexlib.utils.misc import img2tensor
from PIL import Image
from torchvision.transforms.functional import normalize

from freecure import parsing
from freecure.parsing import (
    MAX_FACES,
    PART_LABELS,
    UNPARSED,
    ParseResult,
    clip_box,
    crop_region,
    face_region,
    free_models,
    parse_faces,
    paste_labels,
    select_faces,
    weights_file,
)

# Label ids copied by hand from xinntao/facexlib inference/inference_parsing.py (BiSeNet: "attributions"
# comment in vis_parsing_maps) and inference/inference_parsing_parsenet.py (ParseNet: same place).
BISENET_IDS = {
    "skin": 1, "l_brow": 2, "r_brow": 3, "l_eye": 4, "r_eye": 5, "eye_g": 6, "l_ear": 7, "r_ear": 8,
    "ear_r": 9, "nose": 10, "mouth": 11, "u_lip": 12, "l_lip": 13, "neck": 14, "neck_l": 15,
    "cloth": 16, "hair": 17, "hat": 18,
}  # fmt: skip
PARSENET_IDS = {
    "skin": 1, "nose": 2, "eye_g": 3, "l_eye": 4, "r_eye": 5, "l_brow": 6, "r_brow": 7, "l_ear": 8,
    "r_ear": 9, "mouth": 10, "u_lip": 11, "l_lip": 12, "hair": 13, "hat": 14, "ear_r": 15,
    "neck_l": 16, "neck": 17, "cloth": 18,
}  # fmt: skip


# ------------------------------------------------------------------------------------------------ tables


@pytest.mark.parametrize("part", sorted(BISENET_IDS))
def test_bisenet_label_of_each_part(part):
    assert PART_LABELS["bisenet"][part] == BISENET_IDS[part]


@pytest.mark.parametrize("part", sorted(PARSENET_IDS))
def test_parsenet_label_of_each_part(part):
    assert PART_LABELS["parsenet"][part] == PARSENET_IDS[part]


@pytest.mark.parametrize("parser", ["bisenet", "parsenet"])
def test_tables_are_bijections_onto_the_19_classes(parser):
    table = PART_LABELS[parser]
    assert table["background"] == 0
    assert sorted(table.values()) == list(range(19))
    assert set(table) == set(BISENET_IDS) | {"background"}


def test_part_names_match_the_attribute_vocabulary():
    from freecure.attributes import PARSER_PARTS, VOCABULARY

    assert set(PARSER_PARTS) == set(BISENET_IDS)
    for attribute in VOCABULARY.values():
        assert set(attribute.parts) <= set(BISENET_IDS), attribute.name


def test_part_mask_uses_the_parsers_own_ids():
    labels = np.array([[17, 13], [6, 3]], dtype=np.int32)
    bisenet = ParseResult(parser="bisenet", labels=labels)
    parsenet = ParseResult(parser="parsenet", labels=labels)
    assert bisenet.part_mask(["hair"]).tolist() == [[True, False], [False, False]]
    assert parsenet.part_mask(["hair"]).tolist() == [[False, True], [False, False]]
    assert bisenet.part_mask(["eye_g", "hair"]).tolist() == [[True, False], [True, False]]
    assert parsenet.part_mask("eye_g").tolist() == [[False, False], [False, True]]


def test_part_mask_refuses_unknown_parts_and_failed_results():
    result = ParseResult(parser="bisenet", labels=np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=r"parts: unknown part name\(s\) \['beard'\].*hair"):
        result.part_mask(["beard"])
    with pytest.raises(ValueError, match="no face found"):
        ParseResult(parser="bisenet", reason="no face found").part_mask(["hair"])


# ---------------------------------------------------------------------------------------------- geometry


def test_faces_are_ordered_left_to_right_and_selected():
    # "right" is the widest box, "middle" the one with the largest area.
    right, left, middle = (60, 10, 100, 20), (0, 50, 10, 60), (40, 0, 70, 50)
    boxes = [right, left, middle]
    assert select_faces(boxes, "all") == ([left, middle, right], [])
    assert select_faces(boxes, "largest") == ([middle], [])
    assert select_faces(boxes, (2, 0)) == ([right, left], [])
    chosen, notes = select_faces(boxes, (1, 5))
    assert chosen == [middle]
    assert notes == ["faces: index 5 asked for but only 3 face(s) found"]
    assert select_faces([], "largest") == ([], [])


def test_all_faces_leaves_out_background_faces_and_caps_the_count():
    """A crowd: parsing every detection down to a few pixels costs minutes and cures nothing."""
    big, small, tiny = (100, 100, 200, 200), (300, 100, 350, 150), (10, 10, 30, 30)  # sides 100, 50, 20
    chosen, notes = select_faces([tiny, small, big], "all")
    assert chosen == [big, small]
    assert notes == ["faces: 1 small face(s) not parsed (under a quarter of the largest face's size)"]
    crowd = [(40 * i, 0, 40 * i + 30 + i, 30 + i) for i in range(MAX_FACES + 4)]  # growing, left to right
    chosen, notes = select_faces(crowd, "all")
    assert chosen == crowd[4:], "the largest ones, still left to right"
    assert notes == [f"faces: only the {MAX_FACES} largest of {MAX_FACES + 4} faces parsed"]
    assert select_faces(crowd, (0,)) == ([crowd[0]], []), "indices still count every detected face"


@pytest.mark.parametrize("bad", ["some", (), (-1,), (1.0,), (True,), 3, None])
def test_bad_faces_setting_is_refused_by_name(bad):
    with pytest.raises(ValueError, match="faces must be"):
        select_faces([(0, 0, 10, 10)], bad)


def test_clip_box_clips_and_drops_unusable_boxes():
    assert clip_box([-5.0, 10.0, 30.0, 500.0], (100, 200)) == (0.0, 10.0, 30.0, 100.0)
    assert clip_box([float("nan"), 0, 10, 10], (100, 100)) is None
    assert clip_box([0, 0, float("inf"), 10], (100, 100)) is None
    assert clip_box([10, 10, 12, 50], (100, 100)) is None  # narrower than MIN_FACE_PX
    assert clip_box([150, 10, 190, 50], (100, 100)) is None  # entirely right of the image


def test_face_region_is_an_enlarged_square_raised_above_the_box():
    # Box 20 wide, 30 high, centre (50, 65). Side = round(2.4 * 30) = 72; centre raised by
    # 0.15 * 30 = 4.5 to y = 60.5; x0 = 50 - 36 = 14; y0 = floor(60.5 - 36 + 0.5) = 25.
    assert face_region((40.0, 50.0, 60.0, 80.0)) == (14, 25, 86, 97)
    # A face at the top-left corner: side 24, centre (5, 3.5); x0 = floor(5 - 12 + 0.5) = -7,
    # y0 = floor(3.5 - 12 + 0.5) = -8: the crop reaches outside the image.
    assert face_region((0.0, 0.0, 10.0, 10.0)) == (-7, -8, 17, 16)


def test_crop_region_pads_by_replicating_the_border():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    crop = crop_region(image, (-3, -2, 5, 6))
    assert crop.shape == (8, 8, 3)
    np.testing.assert_array_equal(crop[2:, 3:], image[0:6, 0:5])
    np.testing.assert_array_equal(crop, np.pad(image[0:6, 0:5], ((2, 0), (3, 0), (0, 0)), mode="edge"))
    inside = crop_region(image, (2, 3, 7, 9))
    np.testing.assert_array_equal(inside, image[3:9, 2:7])
    bottom_right = crop_region(image, (9, 8, 15, 13))
    np.testing.assert_array_equal(bottom_right, np.pad(image[8:, 9:], ((0, 3), (0, 3), (0, 0)), mode="edge"))
    with pytest.raises(ValueError, match="outside"):
        crop_region(image, (20, 20, 30, 30))


def test_paste_labels_keeps_the_in_image_part_at_the_border():
    canvas = np.full((10, 12), UNPARSED, dtype=np.int32)
    region_labels = np.arange(64, dtype=np.int32).reshape(8, 8) + 1
    paste_labels(canvas, region_labels, (-3, -2, 5, 6))
    np.testing.assert_array_equal(canvas[0:6, 0:5], region_labels[2:8, 3:8])
    outside = np.ones_like(canvas, dtype=bool)
    outside[0:6, 0:5] = False
    assert (canvas[outside] == UNPARSED).all()
    paste_labels(canvas, region_labels, (20, 20, 28, 28))  # no overlap with the image: nothing happens
    assert (canvas[outside] == UNPARSED).all()


def test_paste_labels_never_covers_an_earlier_faces_parts():
    canvas = np.full((4, 4), UNPARSED, dtype=np.int32)
    first = np.array([[17, 0], [0, 5]], dtype=np.int32)
    paste_labels(canvas, first, (1, 1, 3, 3))
    second = np.full((3, 3), 9, dtype=np.int32)
    paste_labels(canvas, second, (0, 0, 3, 3))
    expected = np.array(
        [[9, 9, 9, -1], [9, 17, 9, -1], [9, 9, 5, -1], [-1, -1, -1, -1]],
        dtype=np.int32,
    )
    np.testing.assert_array_equal(canvas, expected)


# ------------------------------------------------------------------------------------- weights on disk


@pytest.fixture(autouse=True)
def network_attempts(monkeypatch):
    """Every test: any connection attempt or facexlib download is recorded (and fails the test).

    The model cache is kept between tests (each loads from its own files; cache keys hold the path).
    """
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in tests")

    import facexlib.utils
    import facexlib.utils.misc
    import torch.hub

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(facexlib.utils.misc, "load_file_from_url", refuse)
    monkeypatch.setattr(facexlib.utils, "load_file_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    yield attempts
    assert attempts == [], "something tried to download or connect"


def _random_state(build, seed: int) -> dict[str, torch.Tensor]:
    """State dict of a network built by ``build`` with PyTorch's default init under ``seed``."""
    torch.manual_seed(seed)
    return build().state_dict()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Random-weight BiSeNet and mobile0.25 RetinaFace saved the way the real files are."""
    directory = tmp_path_factory.mktemp("GFPGAN")
    torch.save(_random_state(lambda: BiSeNet(num_class=19), 1), directory / "parsing_bisenet.pth")
    mobile = _random_state(lambda: RetinaFace(network_name="mobile0.25", device=torch.device("cpu")), 2)
    torch.save(mobile, directory / "detection_mobilenet0.25_Final.pth")
    return directory


@pytest.fixture(scope="module")
def reference_bisenet(weights_dir) -> BiSeNet:
    network = BiSeNet(num_class=19)
    network.load_state_dict(torch.load(weights_dir / "parsing_bisenet.pth", weights_only=True))
    return network.eval()


def _reference_labels(network: torch.nn.Module, crop_rgb: np.ndarray, mean, std) -> np.ndarray:
    """facexlib's inference script, step by step: 512 bilinear, RGB tensor, normalise, [0], argmax."""
    height, width = crop_rgb.shape[:2]
    bgr = cv2.resize(crop_rgb[:, :, ::-1], (512, 512), interpolation=cv2.INTER_LINEAR)
    tensor = img2tensor(bgr.astype("float32") / 255.0, bgr2rgb=True, float32=True)
    normalize(tensor, mean, std, inplace=True)
    with torch.no_grad():
        out = network(tensor.unsqueeze(0))[0]
    labels = out.squeeze(0).numpy().argmax(0).astype(np.int32)
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def whole_image(reference_bisenet) -> tuple[np.ndarray, np.ndarray]:
    """A non-square image and its labels by facexlib's recipe on the fixture's BiSeNet weights."""
    image = _image(80, 120)
    return image, _reference_labels(reference_bisenet, image, *IMAGENET)


def test_whole_image_parse_equals_facexlibs_inference_recipe(weights_dir, whole_image):
    image, expected = whole_image
    result = parse_faces(image, parser="bisenet", models_dir=weights_dir, detect=False)
    assert result.reason is None and result.ok
    assert result.faces == ((0.0, 0.0, 120.0, 80.0),)
    np.testing.assert_array_equal(result.labels, expected)
    assert len(np.unique(result.labels)) > 3  # the random network's labels depend on the input
    # A PIL image (here RGBA) is read as its RGB pixels.
    from_pil = parse_faces(
        Image.fromarray(image).convert("RGBA"), parser="bisenet", models_dir=weights_dir, detect=False
    )
    np.testing.assert_array_equal(from_pil.labels, result.labels)
    hair = result.part_mask(["hair"])
    np.testing.assert_array_equal(hair, result.labels == 17)


def test_detected_faces_are_parsed_in_their_crops_and_pasted_back(weights_dir, reference_bisenet):
    image = _image(72, 96, seed=3)
    # Independent detection with facexlib's own RetinaFace on the same weights.
    detector = RetinaFace(network_name="mobile0.25", half=False, device=torch.device("cpu"))
    detector.load_state_dict(torch.load(weights_dir / "detection_mobilenet0.25_Final.pth", weights_only=True))
    with torch.no_grad():
        raw = detector.detect_faces(image[:, :, ::-1].copy(), conf_threshold=0.0)
    boxes = [box for box in (clip_box(row[:4], (72, 96)) for row in raw) if box is not None]
    assert boxes, "a zero threshold keeps every prior, so random weights give boxes"
    leftmost = min(boxes, key=lambda b: (b[0] + b[2], b[1] + b[3]))

    result = parse_faces(image, parser="bisenet", models_dir=weights_dir, faces=(0,), conf_threshold=0.0)
    assert result.reason is None
    assert result.faces == (leftmost,)
    region = face_region(leftmost)
    assert result.regions == (region,)
    x0, y0, x1, y1 = region
    # The crop (border-replicated where it leaves the image) parsed by the inference recipe, pasted into
    # an otherwise unparsed canvas.
    rows, cols = slice(max(y0, 0), min(y1, 72)), slice(max(x0, 0), min(x1, 96))
    pad = ((rows.start - y0, y1 - rows.stop), (cols.start - x0, x1 - cols.stop), (0, 0))
    crop = np.pad(image[rows, cols], pad, mode="edge")
    crop_labels = _reference_labels(reference_bisenet, crop, *IMAGENET)
    expected = np.full((72, 96), UNPARSED, dtype=np.int32)
    expected[rows, cols] = crop_labels[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]
    np.testing.assert_array_equal(result.labels, expected)


def test_all_faces_label_exactly_the_union_of_their_crops(weights_dir):
    image = _image(48, 64, seed=5)
    two = parse_faces(image, parser="bisenet", models_dir=weights_dir, faces=(0, 1), conf_threshold=0.0)
    covered = np.zeros((48, 64), dtype=bool)
    for x0, y0, x1, y1 in two.regions:
        covered[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    np.testing.assert_array_equal(two.labels >= 0, covered)
    assert len(two.faces) == 2
    assert two.labels.max() <= 18


def test_no_face_and_missing_index_are_reasons_not_errors(weights_dir):
    image = _image(40, 40)
    # Softmax scores never exceed 1: a threshold of 1 finds nothing, on any weights.
    none = parse_faces(image, parser="bisenet", models_dir=weights_dir, conf_threshold=1.0)
    assert (none.reason, none.labels, none.ok) == ("no face found", None, False)
    far = parse_faces(image, parser="bisenet", models_dir=weights_dir, faces=(999,), conf_threshold=0.0)
    assert far.labels is None
    assert "index 999" in far.reason


def test_parsenet_input_and_output_follow_its_inference_script(tmp_path):
    state = _random_state(lambda: ParseNet(in_size=512, out_size=512, parsing_ch=19), 4)
    torch.save(state, tmp_path / "parsing_parsenet.pth")
    seen = []

    def spy(module, inputs, output):
        if isinstance(module, ParseNet):
            seen.append((inputs[0].clone(), output[0].clone()))

    image = _image(64, 48, seed=7)
    handle = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        result = parse_faces(image, parser="parsenet", models_dir=tmp_path, detect=False)
    finally:
        handle.remove()
    assert result.ok and len(seen) == 1
    network_input, logits = seen[0]
    bgr = cv2.resize(image[:, :, ::-1], (512, 512), interpolation=cv2.INTER_LINEAR)
    expected_input = img2tensor(bgr.astype("float32") / 255.0, bgr2rgb=True, float32=True)
    normalize(expected_input, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), inplace=True)
    torch.testing.assert_close(network_input, expected_input.unsqueeze(0), rtol=0, atol=0)
    assert logits.shape == (1, 19, 512, 512)
    labels = logits[0].argmax(0).numpy().astype(np.int32)
    expected = cv2.resize(labels, (48, 64), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(result.labels, expected)
    np.testing.assert_array_equal(result.part_mask(["hair"]), result.labels == 13)


def test_safetensors_weights_load_like_the_pickle(weights_dir, tmp_path, whole_image):
    from safetensors.torch import save_file

    state = torch.load(weights_dir / "parsing_bisenet.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "parsing_bisenet.safetensors"))
    assert weights_file("bisenet", tmp_path) == tmp_path / "parsing_bisenet.safetensors"
    image, expected = whole_image
    from_safetensors = parse_faces(image, parser="bisenet", models_dir=tmp_path, detect=False)
    np.testing.assert_array_equal(from_safetensors.labels, expected)


def test_module_prefix_is_stripped_and_resnet50_wins_over_mobile(weights_dir, tmp_path):
    mobile_file = tmp_path / "detection_mobilenet0.25_Final.pth"
    mobile_file.write_bytes((weights_dir / "detection_mobilenet0.25_Final.pth").read_bytes())
    (tmp_path / "parsing_bisenet.pth").symlink_to(weights_dir / "parsing_bisenet.pth")
    assert weights_file("retinaface", tmp_path) == mobile_file
    torch.manual_seed(6)
    resnet = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    prefixed = {f"module.{key}": value for key, value in resnet.state_dict().items()}
    torch.save(prefixed, tmp_path / "detection_Resnet50_Final.pth")
    assert weights_file("retinaface", tmp_path) == tmp_path / "detection_Resnet50_Final.pth"

    mobile_file.write_bytes(b"garbage")  # would be the reason if the mobile file were read
    result = parse_faces(_image(40, 56), parser="bisenet", models_dir=tmp_path, conf_threshold=1.0)
    assert result.reason == "no face found"  # the prefixed resnet50 weights loaded and ran


def test_models_are_cached_per_file_and_device_and_can_be_freed(weights_dir):
    free_models()
    for _ in range(2):  # no face at threshold 1: both networks load, nothing is parsed
        parse_faces(_image(32, 32), parser="bisenet", models_dir=weights_dir, conf_threshold=1.0)
    assert free_models() == 2  # the parser and the detector, each loaded once
    assert free_models() == 0


def test_module_global_device_of_old_facexlib_is_set_during_detection_and_restored(weights_dir, monkeypatch):
    from facexlib.detection import retinaface

    monkeypatch.setattr(retinaface, "device", "set-by-the-webui", raising=False)
    during = []
    original = RetinaFace.detect_faces

    def recording_detect(self, *args, **kwargs):
        during.append(retinaface.device)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RetinaFace, "detect_faces", recording_detect)
    parse_faces(_image(32, 32), parser="bisenet", models_dir=weights_dir, conf_threshold=1.0)
    assert during == [torch.device("cpu")]
    assert retinaface.device == "set-by-the-webui"


# --------------------------------------------------------------------------------- failures and downloads


def test_missing_weights_say_which_file_and_where(tmp_path, weights_dir):
    result = parse_faces(_image(32, 32), parser="bisenet", models_dir=tmp_path / "GFPGAN")
    assert result.labels is None
    assert result.reason == (
        f"parsing_bisenet.pth not found in {tmp_path / 'GFPGAN'}; put it there or allow downloads"
    )
    (tmp_path / "parsing_bisenet.pth").symlink_to(weights_dir / "parsing_bisenet.pth")
    no_detector = parse_faces(_image(32, 32), parser="bisenet", models_dir=tmp_path)
    assert no_detector.reason.startswith(
        "detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth not found in"
    )
    assert weights_file("bisenet", tmp_path) == tmp_path / "parsing_bisenet.pth"


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_corrupt_or_unsafe_weight_files_give_reasons_and_run_no_code(tmp_path, weights_dir):
    target = tmp_path / "parsing_bisenet.pth"
    image = _image(32, 32)

    def reason() -> str:
        result = parse_faces(image, parser="bisenet", models_dir=tmp_path, detect=False)
        assert result.labels is None
        return result.reason

    target.write_bytes(b"\x00garbage, not a checkpoint" * 10)
    assert reason().startswith(f"could not read {target} as plain weights")

    marker = tmp_path / "code-ran"
    torch.save({"weight": _RunsCodeWhenUnpickled(marker)}, target)
    assert reason().startswith(f"could not read {target} as plain weights")
    assert not marker.exists()

    torch.save(torch.nn.Linear(2, 2), target)  # a pickled module, not a state dict
    assert reason().startswith(f"could not read {target} as plain weights")

    torch.save({"epoch": 3}, target)
    assert reason() == f"{target} is not a state dict of tensors"

    torch.save({"conv.weight": torch.zeros(1)}, target)
    assert reason().startswith(f"{target} does not hold bisenet weights")

    # A good file again is read (failures are not cached); the parser loads before the detector, so
    # a reason about the (broken) detector file shows the parser weights were accepted.
    target.write_bytes((weights_dir / "parsing_bisenet.pth").read_bytes())
    detector_file = tmp_path / "detection_mobilenet0.25_Final.safetensors"
    detector_file.write_bytes(b"not safetensors")
    broken_detector = parse_faces(image, parser="bisenet", models_dir=tmp_path)
    assert broken_detector.reason.startswith(f"could not read {detector_file} as plain weights")


def test_downloads_only_when_allowed_from_facexlibs_urls(tmp_path, monkeypatch, network_attempts, weights_dir):
    import facexlib.detection
    import facexlib.parsing
    import facexlib.utils.misc

    requests = []

    def fake_download(url, model_dir=None, progress=True, file_name=None, save_dir=None):
        requests.append((url, save_dir))
        path = Path(save_dir) / Path(url).name
        path.write_bytes((weights_dir / path.name).read_bytes())
        return str(path)

    models_dir = tmp_path / "models" / "GFPGAN"
    offline = parse_faces(_image(32, 32), parser="bisenet", models_dir=models_dir, detect=False)
    assert "allow downloads" in offline.reason
    assert network_attempts == []

    monkeypatch.setattr(facexlib.utils.misc, "load_file_from_url", fake_download)
    result = parse_faces(
        _image(32, 32), parser="bisenet", models_dir=models_dir, detect=False, allow_download=True
    )
    assert result.ok
    assert requests == [(parsing.WEIGHT_URLS["bisenet"], str(models_dir))]
    assert (models_dir / "parsing_bisenet.pth").is_file()
    # The URLs are facexlib's own.
    for name in ("bisenet", "parsenet"):
        assert f"'{parsing.WEIGHT_URLS[name]}'" in inspect.getsource(facexlib.parsing.init_parsing_model)
    assert f"'{parsing.WEIGHT_URLS['retinaface']}'" in inspect.getsource(
        facexlib.detection.init_detection_model
    )


def test_failed_download_is_a_reason(tmp_path, monkeypatch):
    import facexlib.utils.misc

    def failing_download(url, **kwargs):
        raise OSError("no route to host")

    monkeypatch.setattr(facexlib.utils.misc, "load_file_from_url", failing_download)
    result = parse_faces(_image(8, 8), parser="parsenet", models_dir=tmp_path, allow_download=True)
    assert result.reason == f"could not download parsing_parsenet.pth to {tmp_path}: no route to host"


# ------------------------------------------------------------------------------------------- bad input


def test_bad_arguments_raise_naming_the_field(tmp_path):
    image = _image(8, 8)
    with pytest.raises(ValueError, match="parser must be one of bisenet, parsenet, none; got 'segformer'"):
        parse_faces(image, parser="segformer", models_dir=tmp_path)
    with pytest.raises(ValueError, match="faces must be"):
        parse_faces(image, parser="bisenet", models_dir=tmp_path, faces="everyone")
    with pytest.raises(ValueError, match="conf_threshold must be in"):
        parse_faces(image, parser="bisenet", models_dir=tmp_path, conf_threshold=2)
    with pytest.raises(ValueError, match=r"image must be .*float64"):
        parse_faces(image.astype(np.float64), parser="bisenet", models_dir=tmp_path)
    with pytest.raises(ValueError, match=r"image must be .*\(8, 8\)"):
        parse_faces(image[:, :, 0], parser="bisenet", models_dir=tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        weights_file("yolo", tmp_path)
    off = parse_faces(image, parser="none", models_dir=tmp_path)
    assert (off.reason, off.labels) == ("face parser is set to none", None)
