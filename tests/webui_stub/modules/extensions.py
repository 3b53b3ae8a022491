"""``modules/extensions.py``: installed extensions; tests register the repository as one."""

from __future__ import annotations

import os
from collections import namedtuple

ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])


class Extension:
    def __init__(self, name: str, path: str, enabled: bool = True, is_builtin: bool = False):
        self.name = name
        self.path = path
        self.enabled = enabled
        self.is_builtin = is_builtin

    def list_files(self, subdir: str, extension: str) -> list[ScriptFile]:
        dirpath = os.path.join(self.path, subdir)
        if not os.path.isdir(dirpath):
            return []
        res = [ScriptFile(self.path, filename, os.path.join(dirpath, filename))
               for filename in sorted(os.listdir(dirpath))]
        return [x for x in res if os.path.splitext(x.path)[1].lower() == extension and os.path.isfile(x.path)]


extensions: list[Extension] = []


def active() -> list[Extension]:
    return [x for x in extensions if x.enabled]
