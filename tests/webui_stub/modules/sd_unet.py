"""``modules/sd_unet.py``: no alternative UNets in the stand-in."""

current_unet = None


def apply_unet(option=None):
    pass
