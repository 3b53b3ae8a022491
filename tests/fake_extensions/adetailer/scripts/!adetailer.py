"""A stand-in of ADetailer (Bing-su/adetailer 36189cb, ``scripts/!adetailer.py``) for the paths FreeCure meets.

In ``postprocess_image`` of a job, per image, as the real ``postprocess_image`` / ``_postprocess_image_inner``:
- at ``batch_index`` 0, every script's ``postprocess`` on ``copy(p)`` with an empty ``Processed``
  (``need_call_postprocess``);
- per detected face, an inpaint pass: a ``StableDiffusionProcessingImg2Img`` built as ``get_i2i_p`` builds it
  (the image, the face's box as the mask, ``ad_mask_blur``, ``inpainting_fill`` 1, "Only masked" with
  ``ad_inpaint_only_masked_padding``, ``ad_denoising_strength``, the job's sampler, steps, CFG, size and seed + face
  index, ``cached_c``/``cached_uc`` cleared, ``_ad_disabled``/``_ad_inner``), the ADetailer prompt (blank: the job's
  prompt; ``[PROMPT]`` replaced), whose scripts are ``copy(p.scripts)`` with ``alwayson_scripts`` kept only where the
  file stem is in the ``ad_script_names`` setting (``script_filter``) and whose ``script_args`` are a copy of the
  job's; each pass starts from the previous pass's image, and the last one replaces the job's image;
- at the last ``batch_index``, every script's ``before_process`` and ``process`` on ``copy(p)`` (``need_call_process``).
Detection: the real one runs a YOLO or mediapipe model; the test hands the face boxes (x1, y1, x2, y2) in through
``shared.fake_adetailer_faces`` (the same for every image, or a function of the image's index). The script args
are ``[enabled, skip_img2img, {ad_* settings}]`` as the real ones.
"""

from copy import copy

from modules import processing, scripts, shared
from PIL import Image, ImageDraw

DEFAULTS = {"ad_prompt": "", "ad_negative_prompt": "", "ad_denoising_strength": 0.4, "ad_mask_blur": 4,
            "ad_inpaint_only_masked": True, "ad_inpaint_only_masked_padding": 32}


class AfterDetailerScript(scripts.Script):
    def title(self):
        return "ADetailer"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr

        return [gr.Checkbox(value=False, label="Enable ADetailer"), gr.Checkbox(value=False, label="Skip img2img"),
                gr.State(value={})]

    def process(self, p, *args):
        if getattr(p, "_ad_disabled", False):
            return
        if not self.enabled(args):
            p._ad_disabled = True

    @staticmethod
    def enabled(args):
        return bool(args) and args[0] is True and any(isinstance(a, dict) for a in args)

    @staticmethod
    def settings(args):
        return {**DEFAULTS, **next(a for a in args if isinstance(a, dict))}

    def script_filter(self, p):
        runner = copy(p.scripts)
        names = {name.strip() for name in shared.opts.data.get("ad_script_names", "").split(",")}
        runner.alwayson_scripts = [s for s in runner.alwayson_scripts
                                   if s.filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] in names]
        return runner, tuple(copy(a) for a in p.script_args)

    def face_pass(self, p, image, box, settings, face_index):
        i = p.iteration * p.batch_size + p.batch_index
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).rectangle(box, fill=255)
        prompt = settings["ad_prompt"].replace("[PROMPT]", p.all_prompts[i]) or p.all_prompts[i]
        negative = settings["ad_negative_prompt"].replace("[PROMPT]", p.all_negative_prompts[i]) \
            or p.all_negative_prompts[i]
        i2i = processing.StableDiffusionProcessingImg2Img(
            init_images=[image], resize_mode=0, denoising_strength=settings["ad_denoising_strength"], mask=mask,
            mask_blur=settings["ad_mask_blur"], inpainting_fill=1,
            inpaint_full_res=settings["ad_inpaint_only_masked"],
            inpaint_full_res_padding=settings["ad_inpaint_only_masked_padding"], inpainting_mask_invert=0,
            prompt=prompt, negative_prompt=negative, seed=p.all_seeds[i] + face_index,
            subseed=p.all_subseeds[i] + face_index, subseed_strength=p.subseed_strength,
            sampler_name=p.sampler_name, batch_size=1, n_iter=1, steps=p.steps, cfg_scale=p.cfg_scale,
            width=p.width, height=p.height, extra_generation_params={k: v for k, v in p.extra_generation_params.items()
                                                                        if not callable(v)},
            do_not_save_samples=True, do_not_save_grid=True)
        i2i.cached_c = [None, None]
        i2i.cached_uc = [None, None]
        i2i.scripts, i2i.script_args = self.script_filter(p)
        i2i._ad_disabled = True
        i2i._ad_inner = True
        try:
            processed = processing.process_images(i2i)
        finally:
            i2i.close()
        return processed.images[0] if processed.images else None

    def postprocess_image(self, p, pp, *args):
        if getattr(p, "_ad_disabled", False) or not self.enabled(args):
            return
        settings = self.settings(args)
        if p.batch_index == 0:
            p.scripts.postprocess(copy(p), processing.Processed(p, [], p.seed, ""))
        image = pp.image
        faces = getattr(shared, "fake_adetailer_faces", [])
        faces = faces(p.iteration * p.batch_size + p.batch_index) if callable(faces) else faces
        for face_index, box in enumerate(faces):
            image = self.face_pass(p, image, box, settings, face_index) or image
        pp.image = image
        if p.batch_index == p.batch_size - 1:
            copy_p = copy(p)
            p.scripts.before_process(copy_p)
            p.scripts.process(copy_p)
