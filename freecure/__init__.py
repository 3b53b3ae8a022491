"""FreeCure: restore the prompted attributes of personalized portraits, training-free.

The package is the pure core; ``freecure.webui`` holds the only code that talks to a WebUI host.
"""

__version__ = "0.1.0"
