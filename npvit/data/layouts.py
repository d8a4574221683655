"""The file layouts the CIFAR authors publish, as data: folder and archive names, and which file is which.

Each dataset comes in a "binary version" (fixed-size records, read with NumPy alone) and a "python
version" (pickled dicts). When both are available the binary one is preferred: it needs no unpickling at
all and reads faster. https://www.cs.toronto.edu/~kriz/cifar.html describes both.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SHAPE = (3, 32, 32)  # as stored: channels first, rows, columns
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class Layout:
    dataset: str  # "cifar10" | "cifar100"
    kind: str  # "binary" | "python"
    folder: str  # the top-level folder inside the archive
    archive: str  # the official archive's file name
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test + self.meta


#: The most an archive of each dataset may hold and expand to. Each layout of either dataset is about 185 MB
#: (60,000 images of 3,072 bytes, with one or two label bytes each or pickled) in at most 9 files and folders;
#: an archive holding both layouts and a few extra files fits well inside. Extraction stops beyond these.
MAX_EXTRACTED_BYTES = {"cifar10": 400 * 10**6, "cifar100": 400 * 10**6}
MAX_MEMBERS = {"cifar10": 100, "cifar100": 100}

DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

#: Number of classes per (dataset, label mode).
NUM_CLASSES = {("cifar10", "fine"): 10, ("cifar100", "fine"): 100, ("cifar100", "coarse"): 20}

LAYOUTS: dict[str, tuple[Layout, ...]] = {  # preferred layout first
    "cifar10": (
        Layout("cifar10", "binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
               tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), ("batches.meta.txt",)),
        Layout("cifar10", "python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
               tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",)),
    ),
    "cifar100": (
        Layout("cifar100", "binary", "cifar-100-binary", "cifar-100-binary.tar.gz",
               ("train.bin",), ("test.bin",), ("fine_label_names.txt", "coarse_label_names.txt")),
        Layout("cifar100", "python", "cifar-100-python", "cifar-100-python.tar.gz",
               ("train",), ("test",), ("meta",)),
    ),
}
