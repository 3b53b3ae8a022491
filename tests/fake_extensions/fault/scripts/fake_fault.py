"""A test extension that can fail inside the host's sampling, and that registers a CFG callback in every
sampling hook as Forge's FreeU does (``sd_forge_freeu/scripts/forge_freeu.py``: ``on_cfg_denoiser`` in
``process_before_every_sampling``), so that callback comes after any older one in the host's list. The test
hands in a probe through ``shared.fake_fault_probe``: ``probe.unet_call`` runs before every UNet forward (and
may raise, as an out-of-memory error or a NaN check would), ``probe.on_cfg_denoiser`` counts the CFG calls.
Without a probe the extension does nothing."""

from modules import script_callbacks, scripts, shared


class FakeFault(scripts.Script):
    sorting_priority = 12  # before FreeCure (15), as FreeU

    def title(self):
        return "Fake fault"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return []

    def process_before_every_sampling(self, p, *args, **kwargs):
        probe = getattr(shared, "fake_fault_probe", None)
        if probe is None:
            return
        script_callbacks.remove_callbacks_for_function(probe.on_cfg_denoiser)
        script_callbacks.on_cfg_denoiser(probe.on_cfg_denoiser)
        model = p.sd_model
        objects = getattr(model, "forge_objects", None)
        unet = objects.unet.model.diffusion_model if objects is not None else model.model.diffusion_model
        probe.watch(unet)
