"""Suite-wide test settings."""

import torch

# The models here are tiny: per-op overhead dominates, and on a shared 2-core machine two torch threads
# contend with each other (a tiny UNet call took 3.5 s with 2 threads and 0.14 s with 1).
torch.set_num_threads(1)
