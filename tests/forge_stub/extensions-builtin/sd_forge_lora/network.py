"""``extensions-builtin/sd_forge_lora/network.py`` of Forge 2 (dfdcbab6), for the stand-in: ``NetworkOnDisk``
(a LoRA file: name, alias, hash) and ``Network`` (one loaded by ``networks.load_networks``). The stand-in's
files have no metadata (the alias is the name) and their hash is that of the name."""

from __future__ import annotations

import hashlib
import os


class NetworkOnDisk:
    def __init__(self, name, filename):
        self.name = name
        self.filename = filename
        self.metadata = {}
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        self.alias = self.metadata.get("ss_output_name", self.name)
        self.hash = None
        self.shorthash = None
        self.set_hash("")

    def set_hash(self, v):
        self.hash = v
        self.shorthash = self.hash[0:12]
        if self.shorthash:
            import networks

            networks.available_network_hash_lookup[self.shorthash] = self

    def read_hash(self):
        if not self.hash:
            self.set_hash(hashlib.sha256(self.name.encode()).hexdigest())


class Network:
    def __init__(self, name, network_on_disk):
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules = {}
        self.bundle_embeddings = {}
        self.mtime = None
        self.mentioned_name = None
