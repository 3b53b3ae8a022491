"""``modules/sd_hijack.py`` (A1111 1.10.1 82a973c0): ``model_hijack``, its embedding database, and of the hijack
only the attention optimization: ``apply_optimizations`` when a model is loaded, chosen by the setting
``cross_attention_optimization`` ("Automatic": the highest-priority optimizer, which is InvokeAI on a machine
without CUDA or MPS; a title picks that one; an unknown title the first)."""

from modules import shared
from modules.textual_inversion.textual_inversion import EmbeddingDatabase

current_optimizer = None


def apply_optimizations(option=None):
    global current_optimizer
    from modules import sd_hijack_optimizations

    optimizers = sd_hijack_optimizations.list_optimizers()
    selection = option or shared.opts.cross_attention_optimization
    matching = next((o for o in optimizers if o.title() == selection), None)
    current_optimizer = optimizers[0] if selection == "Automatic" or matching is None else matching
    current_optimizer.apply()
    return current_optimizer.name


class StableDiffusionModelHijack:
    def __init__(self):
        self.embedding_db = EmbeddingDatabase()
        self.optimization_method = None

    def hijack(self, m):
        self.apply_optimizations()

    def apply_optimizations(self, option=None):
        self.optimization_method = apply_optimizations(option)


model_hijack = StableDiffusionModelHijack()
