"""FreeCure inside ADetailer's face passes (Bing-su/adetailer, ``scripts/!adetailer.py``).

ADetailer inpaints each detected face from ``postprocess_image`` of a job: a new ``StableDiffusionProcessingImg2Img``
marked ``_ad_inner``, with a copy of the job's script args, whose scripts are the job's always-on scripts named in
its setting "Script names to apply to ADetailer" (file stems: ours is ``freecure``). FreeCure cures such a pass as
any inpaint job, with the job's X/Y/Z overrides, and reports it in the job's infotext. ADetailer also calls every
script's ``postprocess`` on ``copy(p)`` with an empty result before the face passes and ``before_process`` /
``process`` on ``copy(p)`` after a batch's last image: such copies carry the job's state but are not jobs."""

from __future__ import annotations

from typing import Any

FACE_PASSES_KEY = "FreeCure ADetailer"


def is_face_pass(p: Any) -> bool:
    return bool(getattr(p, "_ad_inner", False))


def _image_of(p: Any) -> tuple[int, int]:
    return getattr(p, "iteration", 0), getattr(p, "batch_index", 0)


class FacePasses:
    """The job whose images ADetailer works on now, and how many of the current image's face passes were cured."""

    def __init__(self) -> None:
        self.job: Any = None
        self._image: tuple[int, int] | None = None
        self._passes = self._cured = 0

    def start_job(self, p: Any) -> None:
        self.job, self._image = p, None

    def end_job(self, p: Any) -> None:
        if self.job is p:
            self.job = self._image = None

    def leave_other_image(self, p: Any) -> bool:
        """At the job's ``postprocess_image`` of an image (before its infotext is made, whether ADetailer ran
        before or after us): take out a count that belongs to another image, one whose passes came earlier;
        True when it did."""
        if self.job is not p or self._image in (None, _image_of(p)):
            return False
        self._image, self._passes, self._cured = None, 0, 0
        p.extra_generation_params.pop(FACE_PASSES_KEY, None)
        return True

    def record(self, cured: bool) -> tuple[Any, int, bool]:
        """Count one face pass of the job's current image; returns the job (None outside a known job), the
        pass's number in the image (from 1) and whether it is the image's first."""
        job = self.job
        if job is None:
            return None, 0, False
        image = _image_of(job)
        first = image != self._image
        if first:  # the infotext is per image: ADetailer runs after each image's sampling
            self._image, self._passes, self._cured = image, 0, 0
        self._passes += 1
        self._cured += int(cured)
        job.extra_generation_params[FACE_PASSES_KEY] = f"{self._cured}/{self._passes} face passes cured"
        return job, self._passes, first
