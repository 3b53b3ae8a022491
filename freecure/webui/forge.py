"""The Forge host (Forge 2's ``backend`` and classic Forge's ``ldm_patched``): attention through replace
patches on a clone of ``p.sd_model.forge_objects.unet``, row roles from the patches' ``transformer_options``.

Forge resets ``forge_objects`` before every sampling call and ignores instance forwards of other hosts, so
the clone is made afresh inside each pass, after the identity switch, and put back when the pass ends.
Every host import happens inside functions.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from freecure.attention import AttentionEngine, LayerKey, RowRole, joint_blocks, token_grid
from freecure.pipeline.host import Branch, CallHooks
from freecure.webui.a1111 import A1111Host, CallRouter
from freecure.webui.forge_flux import intercepted_flux, is_flux, t5_token_columns
from freecure.webui.hosts import attention_modules

PatchFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]


def attention_function() -> Callable[..., torch.Tensor]:
    """The host's own attention kernel, ``fn(q, k, v, heads, mask=None)`` on projected tensors."""
    try:
        from backend.attention import attention_function as kernel
    except ImportError:  # classic Forge
        from ldm_patched.ldm.modules.attention import optimized_attention as kernel
    return kernel


# Forge's IP-Adapter (extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py) keeps
# ``is_instant_id`` on its ``IPAdapter`` module but not ``is_faceid``: FaceID shows as the projection's class.
_FACEID_PROJECTIONS = {"MLPProjModelFaceId": "IP-Adapter FaceID", "ProjModelFaceIdPlus": "IP-Adapter FaceID Plus"}
# ``CrossAttentionPatch``'s parallel lists, one entry per IP-Adapter unit on the layer (``set_new_condition``).
_PATCH_LISTS = ("weights", "ipadapters", "conds", "unconds", "masks", "weight_type", "sigma_start", "sigma_end",
                "unfold_batch")


def adapter_identity(ipadapter: Any) -> str | None:
    """The face identity one of Forge's ``IPAdapter`` modules injects, None for a style IP-Adapter."""
    if getattr(ipadapter, "is_instant_id", False) is True:
        return "InstantID"
    return _FACEID_PROJECTIONS.get(type(getattr(ipadapter, "image_proj_model", None)).__name__)


def patch_identities(patch: Any) -> list[str | None]:
    """Per IP-Adapter unit of an attn2 replace patch, the identity it injects (empty for other patches)."""
    return [adapter_identity(adapter) for adapter in getattr(patch, "ipadapters", None) or ()]


def without_identity(patch: Any) -> Any:
    """The patch for the foundation pass: an IP-Adapter patch keeps only its style units (a copy; None when
    nothing is left, i.e. the host's attention); any other patch as it is."""
    kinds = patch_identities(patch)
    if not any(kinds):
        return patch
    keep = [i for i, kind in enumerate(kinds) if kind is None]
    if not keep:
        return None
    kept = copy.copy(patch)
    for name in _PATCH_LISTS:
        values = getattr(patch, name, None)
        if isinstance(values, list) and len(values) == len(kinds):
            setattr(kept, name, [values[i] for i in keep])
    return kept


def _closes_over(function: Any, tensors: list[torch.Tensor]) -> bool:
    cells = getattr(inspect.unwrap(function), "__closure__", None) or ()
    values = [cell.cell_contents for cell in cells if isinstance(cell.cell_contents, torch.Tensor)]
    return any(value.shape == tensor.shape and torch.equal(value, tensor.to(value.device))
               for value in values for tensor in tensors)


def switch_identity_adapters_off(model_options: dict) -> None:
    """On a clone's options, in place: identity units out of the attn2 patches, and out of the ControlNet
    conditioning the InstantID modifier that feeds the ControlNets its face embedding (the modifier closes
    over the same embedding the patch holds; the patch is a deep copy, so compared by value)."""
    options = model_options.get("transformer_options", {})
    attn2 = options.get("patches_replace", {}).get("attn2", {})
    face_embeddings = [cond for patch in attn2.values() if any(patch_identities(patch))
                       for kind, cond in zip(patch_identities(patch), patch.conds, strict=True) if kind == "InstantID"]
    for key, patch in list(attn2.items()):
        replacement = without_identity(patch)
        if replacement is None:
            del attn2[key]
        else:
            attn2[key] = replacement
    modifiers = options.get("controlnet_conditioning_modifiers")
    if face_embeddings and modifiers:
        options["controlnet_conditioning_modifiers"] = [m for m in modifiers if not _closes_over(m, face_embeddings)]


def rows_of(transformer_options: dict, batch: int, announced: Sequence[RowRole] = ()) -> list[RowRole]:
    """Row roles of one Forge UNet call: ``cond_or_uncond`` lists its chunks (0 cond, 1 uncond), each with
    one row per image, usually [uncond, cond].

    With AND, ``backend/sampling/condition.py``'s ``compile_weighted_conditions`` makes one cond chunk per
    sub-prompt position (zipping the images' sub-prompts: as many as the image with fewest has, from the
    ``announced`` roles of the call), and ``calc_cond_uncond_batch`` pops the entries [part 0 .. K-1, uncond]
    highest index first: a call holding every cond chunk has them in descending part order. When a low-memory
    split spreads them over several calls, a chunk's part is not known: it gets a part no image has (no
    row's columns). Without ``announced`` roles every cond chunk is part 0. In one-pass mode (``announced``
    has foundation rows) a chunk holds the personalized images, then the foundation's.
    """
    chunks = transformer_options["cond_or_uncond"]
    per_chunk = batch // len(chunks)
    counts = Counter((role.foundation, role.image) for role in announced if role.cond)
    parts, unknown = min(counts.values(), default=1), max(counts.values(), default=0)
    whole = chunks.count(0) == parts
    per_branch = sum(1 for foundation, _ in counts if not foundation) if any(f for f, _ in counts) else 0
    roles: list[RowRole] = []
    for kind in chunks:
        part = 0
        if kind == 0:
            part = parts - 1 - sum(1 for role in roles if role.cond) // per_chunk if whole else unknown
        if per_branch:
            roles += [RowRole(cond=kind == 0, image=i % per_branch, part=part, foundation=i >= per_branch)
                      for i in range(per_chunk)]
        else:
            roles += [RowRole(cond=kind == 0, image=i, part=part) for i in range(per_chunk)]
    return roles


def make_patch(engine: AttentionEngine, layer: LayerKey, is_self: bool, previous: PatchFn | None) -> PatchFn:
    """A replace patch routing one layer to the engine; every call the engine does not take over goes to
    the previous patch (another extension's) or the host's kernel, unchanged."""
    kernel = attention_function()

    def original(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict) -> torch.Tensor:
        if previous is not None:
            return previous(q, k, v, options)
        return kernel(q, k, v, options["n_heads"])

    def patch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict) -> torch.Tensor:
        if not engine.wants(layer, is_self):
            return original(q, k, v, options)
        try:
            return routed(q, k, v, options)
        except Exception as error:  # our failure must not break the host's sampling
            engine.fail(error)
            return original(q, k, v, options)

    def routed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, options: dict) -> torch.Tensor:
        rows = rows_of(options, q.shape[0], engine.roles)
        heads, scale = options["n_heads"], options["dim_head"] ** -0.5
        grid = token_grid(engine.latent_hw, q.shape[1])
        if engine.records(is_self):
            out = original(q, k, v, options)
            if is_self:
                engine.observe_self(layer, k, v, rows)
            else:
                engine.observe_cross(layer, q, k, heads, scale, rows, grid)
            return out
        result = engine.fasa_rows(layer, q, k, v, heads, scale, rows, grid)
        if result is None:
            return original(q, k, v, options)
        handled, fasa_out = result
        if previous is not None:
            # Another extension's patch gets the whole batch: its options describe every row.
            out = previous(q, k, v, options).clone()
        else:
            # The host's kernel only for the rows FASA leaves (the unconditional ones, usually).
            taken = set(handled)
            rest = [row for row in range(q.shape[0]) if row not in taken]
            if not rest:
                return fasa_out.to(q.dtype)
            plain = kernel(q[rest], k[rest], v[rest], heads)
            out = plain.new_empty((q.shape[0], *plain.shape[1:]))
            out[rest] = plain
        out[handled] = fasa_out.to(out.dtype)
        return out

    return patch


class ForgeRouter(CallRouter):
    """Forge gives ``on_cfg_denoiser`` the unbatched latent: one row per image; uncond rows are implied."""

    def latents(self, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return params.x, params.sigma


class ForgeHost(A1111Host):
    """The pipeline host on Forge; passes, conditioning, RNG and progress are shared with A1111."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.router = ForgeRouter(self.p)
        self._engine: AttentionEngine | None = None
        self._identity_on = True

    @property
    def unet(self) -> torch.nn.Module:
        return self.p.sd_model.forge_objects.unet.model.diffusion_model

    def _whole_batch_sources(self) -> list[str]:
        # Forge merges every network into its UNet patcher: no per-row switch.
        return self.identity.sources()

    def one_pass_unavailable(self) -> str | None:
        reason = super().one_pass_unavailable()
        if reason is None and getattr(self.p.sd_model.forge_objects.unet, "controlnet_linked_list", None) is not None:
            return "ControlNet's units are set up for the job's own batch"
        return reason

    def layer_keys(self) -> list[LayerKey]:
        return list(joint_blocks(self.unet)) if is_flux(self.unet) else super().layer_keys()

    def token_columns(self, prompt: str, phrases: Mapping[str, Sequence[str]]) -> dict[str, list[int]]:
        """FLUX's joint attention reads the T5 context; CLIP-L only gives it the pooled vector."""
        t5 = getattr(self.p.sd_model, "text_processing_engine_t5", None)
        if t5 is not None and is_flux(self.unet):
            return t5_token_columns(t5, prompt, phrases)
        return super().token_columns(prompt, phrases)

    def text_embedder(self) -> Any:
        model = self.p.sd_model
        return getattr(model, "text_processing_engine_l", None) or getattr(model, "text_processing_engine", None) \
            or super().text_embedder()

    @contextlib.contextmanager
    def attach(self, engine: AttentionEngine) -> Iterator[None]:
        # The patches go on a clone made inside each pass (``_patched``): Forge swaps forge_objects per pass.
        self._engine = engine
        try:
            yield
        finally:
            self._engine = None

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        """Our patches on a clone of the UNet patcher the host holds now (as Forge's StyleAlign does). On exit
        the patcher goes back only while our clone is still the one in place: Forge resets ``forge_objects``
        between its hires calls and other extensions install newer patchers, which must never be replaced
        by an older one."""
        if self._engine is None:
            yield
            return
        if is_flux(self.unet):  # no attention patch exists for FLUX blocks: see forge_flux.py
            with intercepted_flux(self._engine, self.unet):
                yield
            return
        objects = self.p.sd_model.forge_objects
        original = objects.unet
        clone = original.clone()
        if not self._identity_on and "adapter" in self.identity.kinds:
            switch_identity_adapters_off(clone.model_options)
        replace = clone.model_options.get("transformer_options", {}).get("patches_replace", {})
        for key in attention_modules(self.unet):
            for target, is_self in (("attn1", True), ("attn2", False)):
                # Forge looks up (block, number, index), then the block-level (block, number) SD1 patches use.
                patches = replace.get(target, {})
                previous = patches.get(key, patches.get(key[:2]))
                patch = make_patch(self._engine, key, is_self, previous)
                setter = clone.set_model_attn1_replace if is_self else clone.set_model_attn2_replace
                setter(patch, *key)
        objects.unet = clone
        try:
            yield
        finally:
            if objects.unet is clone:
                objects.unet = original

    @contextlib.contextmanager
    def _branch_state(self, branch: Branch) -> Iterator[None]:
        # The patches go on in ``routed``, inside this state: on the patcher of the identity switch.
        with super()._branch_state(branch):
            self._identity_on = branch.identity
            try:
                yield
            finally:
                self._identity_on = True

    @contextlib.contextmanager
    def routed(self, hooks: CallHooks, conditioning: Any, images_per_branch: int = 0) -> Iterator[None]:
        with super().routed(hooks, conditioning, images_per_branch), self._patched():
            yield


def lora_arguments(params_list: Sequence[Any]) -> tuple[list[str], list[float], list[float]]:
    """Names, text-encoder and UNet multipliers of ``<lora:name:te:unet>`` tags (``te=``/``unet=`` named too),
    read as Forge's ``ExtraNetworkLora.activate`` reads them (``extra_networks_lora.py``, Forge 2 and Neo alike)."""
    names, te_multipliers, unet_multipliers = [], [], []
    for params in params_list:
        names.append(params.positional[0])
        te = float(params.positional[1]) if len(params.positional) > 1 else 1.0
        te = float(params.named.get("te", te))
        unet = float(params.positional[2]) if len(params.positional) > 2 else te
        unet = float(params.named.get("unet", unet))
        te_multipliers.append(te)
        unet_multipliers.append(unet)
    return names, te_multipliers, unet_multipliers


def host_networks(lora_network: Any) -> Any:
    """The module the host's LoRA extra network loads networks with: ``extensions-builtin/sd_forge_lora/
    networks.py``, which ``extra_networks_lora.py`` imports as ``networks``."""
    module = getattr(type(lora_network).activate, "__globals__", {}).get("networks")
    if not callable(getattr(module, "load_networks", None)):
        raise RuntimeError("the WebUI's LoRA loader (sd_forge_lora's networks.load_networks) was not found, so the"
                           " networks in keep_networks cannot stay on in the foundation pass")
    return module


@contextlib.contextmanager
def scratch_lora_state(model: Any, networks: Any) -> Iterator[None]:
    """Lets ``networks.load_networks`` build patchers without changing the job: everything it writes (the
    model's ``forge_objects``, ``forge_objects_after_applying_lora`` and ``current_lora_hash``, the module's
    ``loaded_networks``) is put back on exit. It starts from a copy of ``forge_objects_original``, and with
    ``current_lora_hash`` None, which equals no LoRA set's hash, so it always builds."""
    saved = model.forge_objects, model.forge_objects_after_applying_lora, model.current_lora_hash
    loaded = list(networks.loaded_networks)
    model.forge_objects = model.forge_objects_original.shallow_copy()
    model.current_lora_hash = None
    try:
        yield
    finally:
        model.forge_objects, model.forge_objects_after_applying_lora, model.current_lora_hash = saved
        networks.loaded_networks[:] = loaded


# What a UNet patcher carries besides its weights: other extensions' patches and ControlNets for this pass.
_PASS_STATE = ("model_options", "controlnet_linked_list", "extra_preserved_memory_during_sampling",
               "extra_model_patchers_during_sampling", "extra_concat_condition")


class ForgeIdentitySwitch:
    """Identity off on Forge: the UNet and text encoder as the host's own LoRA loading builds them from the weights
    before LoRA (``forge_objects_original``) with only the job's networks listed in keep_networks, at their
    multipliers: bit for bit what a job whose prompt has only those networks samples with. Everything else of
    this pass is kept (other extensions' patches, ControlNet units such as pose or depth); identity adapters are
    taken out of the pass's patches (``switch_identity_adapters_off``, ``ForgeHost``)."""

    def __init__(self, p: Any, *, kinds: Any, keep_networks: Any, is_hires: bool, unet: Any = None) -> None:
        from modules import extra_networks

        self.p = p
        self.kinds = set(kinds)
        keep = {name.lower() for name in keep_networks}
        data = getattr(p, "hr_extra_network_data" if is_hires else "extra_network_data", None) or {}
        self.lora_network = extra_networks.extra_network_registry.get("lora")

        def loads_lora(kind: str) -> bool:
            # As ``lookup_extra_networks``: a tag goes to the network registered under its name or alias (Forge
            # registers no 'lyco' alias: such tags load nothing).
            found = extra_networks.extra_network_registry.get(kind) or extra_networks.extra_network_aliases.get(kind)
            return found is not None and found is self.lora_network

        # In the order the host loads them.
        tags = [(kind, params) for kind, params_list in data.items() if loads_lora(kind) for params in params_list]
        self.kept = [params for _kind, params in tags if str(params.positional[0]).lower() in keep]
        self.identity = [f"{kind}:{params.positional[0]}" for kind, params in tags
                         if str(params.positional[0]).lower() not in keep]
        self._kept_patchers: tuple[Any, Any] | None = None

    def sources(self) -> list[str]:
        found = list(self.identity) if "lora" in self.kinds else []
        unet = getattr(getattr(self.p.sd_model, "forge_objects", None), "unet", None)
        patches = (getattr(unet, "model_options", {}) or {}).get("transformer_options", {}) \
            .get("patches_replace", {}).get("attn2", {})
        if "adapter" in self.kinds:
            kinds = [kind for patch in patches.values() for kind in patch_identities(patch) if kind]
            found += [f"adapter:{kind}" for kind in dict.fromkeys(kinds)]
        return found

    def kept_patchers(self) -> tuple[Any, Any]:
        """The UNet and CLIP patchers with only the kept networks (built once, by the host's ``load_networks``)."""
        if self._kept_patchers is None:
            model = self.p.sd_model
            if not self.kept:
                original = model.forge_objects_original
                self._kept_patchers = original.unet, original.clip
            else:
                networks = host_networks(self.lora_network)
                with scratch_lora_state(model, networks):
                    networks.load_networks(*lora_arguments(self.kept))
                    self._kept_patchers = model.forge_objects.unet, model.forge_objects.clip
        return self._kept_patchers

    @contextlib.contextmanager
    def switched(self, *, on: bool) -> Iterator[None]:
        model = self.p.sd_model
        if on or "lora" not in self.kinds or not self.identity or model.forge_objects_original is None:
            yield
            return
        kept_unet, kept_clip = self.kept_patchers()
        saved = model.forge_objects
        unet = kept_unet.clone()
        for name in _PASS_STATE:
            if hasattr(saved.unet, name):
                setattr(unet, name, copy.deepcopy(getattr(saved.unet, name)) if name == "model_options"
                        else getattr(saved.unet, name))
        model.forge_objects = saved.shallow_copy()
        model.forge_objects.unet, model.forge_objects.clip = unet, kept_clip
        try:
            yield
        finally:
            model.forge_objects = saved
