"""Datasets for training: CIFAR-10, CIFAR-100 and a synthetic set, as uint8 images in host memory.

    from npvit.data import load_dataset, DataError
    ds = load_dataset("cifar100", label_mode="coarse")           # cache, downloading if needed
    ds = load_dataset("cifar10", data_dir="/data/cifar-10-binary.tar.gz", download=False)
    ds.x_train.shape, ds.y_train.dtype, ds.num_classes          # (50000, 32, 32, 3) uint8, int64, 10

Only NumPy, the standard library and tqdm (the download's progress bar) are used. Binary archives are read
with NumPy alone; the python-layout pickles go through a restricted unpickler that builds arrays only from
bytes in the file and refuses everything else. Downloads resume and are MD5-checked; archives are extracted
once, verified (gzip CRC and length, the tar data to its end), bounded, safely and atomically, into the cache
(``$NPVIT_CACHE``, default ``~/.cache/npvit``). Data problems raise :class:`DataError` with a message that
says what to do.
"""

from .cifar import SOURCES
from .dataset import Dataset
from .download import Source
from .errors import DataError
from .load import DATASETS, LABEL_MODES, NATIVE_SIZES, default_cache_dir, load_dataset
from .synthetic import synthetic_dataset

__all__ = [
    "DATASETS",
    "LABEL_MODES",
    "NATIVE_SIZES",
    "SOURCES",
    "DataError",
    "Dataset",
    "Source",
    "default_cache_dir",
    "load_dataset",
    "synthetic_dataset",
]
