import os

os.environ.setdefault("LOC_UNLEARN_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

# Tiny models are overhead-bound; one thread avoids oversubscribing small CI machines.
torch.set_num_threads(1)
