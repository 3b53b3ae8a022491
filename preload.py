"""WebUI preload: FreeCure's command-line flags (read later as ``shared.cmd_opts.freecure_*``)."""

import argparse


def preload(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--freecure-models-dir", type=str, default=None,
                        help="FreeCure: folder of face-parser weights (default: models/GFPGAN)")
    parser.add_argument("--freecure-no-download", action="store_true",
                        help="FreeCure: never download face-parser weights, whatever a request allows")
