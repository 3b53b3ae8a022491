"""``modules/generation_parameters_copypaste.py``: the pre-1.8 name, an alias of ``infotext_utils``."""

import sys

from modules import infotext_utils

sys.modules[__name__] = infotext_utils
