"""``backend/memory_management.py`` of Forge 2 (dfdcbab6): which patcher's weights the shared model holds.

``current_loaded_models`` lists ``LoadedModel``s, equal when they hold the same patcher object
(``LoadedModel.__eq__``). ``load_models_gpu`` leaves a patcher that is already loaded as it is; any other is
loaded after every loaded clone of its model is unloaded (``unload_model_clones``), and loading ends in
``refresh_loras`` (``LoadedModel.model_load``): the model's ``LoraLoader`` merges that patcher's LoRA patches
unless the same LoRA set is merged already. Unloading restores object patches only, never LoRA weights.
Left out, as on a CPU-only machine: device moves, memory estimates, ``free_memory`` (GPU only)."""

from __future__ import annotations

current_loaded_models: list[LoadedModel] = []


class LoadedModel:
    def __init__(self, model):
        self.model = model

    def model_load(self):
        self.model.forge_patch_model()
        self.model.refresh_loras()

    def model_unload(self, avoid_model_moving=False):
        self.model.forge_unpatch_model()

    def __eq__(self, other):
        return self.model is other.model


def unload_model_clones(model):
    to_unload = [i for i, loaded in enumerate(current_loaded_models) if model.is_clone(loaded.model)]
    for i in reversed(to_unload):
        current_loaded_models.pop(i).model_unload(avoid_model_moving=True)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    models_to_load = []
    for model in models:
        loaded = LoadedModel(model)
        if loaded in current_loaded_models:
            current_loaded_models.insert(0, current_loaded_models.pop(current_loaded_models.index(loaded)))
        else:
            models_to_load.append(loaded)
    for loaded in models_to_load:
        unload_model_clones(loaded.model)
    for loaded in models_to_load:
        loaded.model_load()
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])
