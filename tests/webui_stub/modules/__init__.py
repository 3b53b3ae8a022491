"""Stand-in of the Automatic1111 WebUI 1.10 ``modules`` package for CPU tests (see tests/webui_host.py)."""
