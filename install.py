"""WebUI installer hook: install only what is missing. The WebUI skips this with --skip-install."""

import launch

if not launch.is_installed("facexlib"):
    launch.run_pip("install facexlib==0.3.0", "facexlib for FreeCure's face parsing")
