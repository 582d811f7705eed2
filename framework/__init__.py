"""recoup core: config, data, tokenizer, model, training, evaluation, checkpoints, CLI."""

import os

# recoup never downloads: every data set is generated or read from a local file.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Local files load in milliseconds; their "Generating train split" bars are noise.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
