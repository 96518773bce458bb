"""Data sets: Fashion-MNIST, CIFAR-10 and CIFAR-100, read from local files.

Nothing here needs the network: Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (or any folder of IDX files), CIFAR from
torchvision's extracted folders. Downloading through torchvision happens only
when asked (``download=True``). CIFAR files are Python pickles, so they are
read with a restricted unpickler that can rebuild numpy arrays and nothing
else. A small Fashion-MNIST sample ships in ``assets/samples`` so the app
works with no data set installed.
"""
from __future__ import annotations

import codecs
import gzip
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

DATASETS = ("fashion_mnist", "cifar10", "cifar100")

ENV_VAR = "EXPLORER_DATA"
# Module-level so tests (and unusual installs) can point them elsewhere.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path("~/.cache/explorer")
SAMPLES_FILE = Path(__file__).resolve().parent.parent / "assets" / "samples" / "fashion_mnist_test_samples.safetensors"

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Sub-folders of a data root that may hold the four IDX files: the root itself,
# torchvision's download layout, and a plain per-data-set folder.
FASHION_SUBDIRS = (".", "FashionMNIST/raw", "fashion-mnist")
CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
CIFAR_LABEL_KEY = {"cifar10": b"labels", "cifar100": b"fine_labels"}

CLASS_NAMES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
    # The fine label names of cifar-100-python/meta (alphabetical).
    "cifar100": [
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
        "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel",
        "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
        "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
        "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
        "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
        "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
        "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
        "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
        "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea",
        "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
        "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
        "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
        "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
    ],
}
_SHAPES = {"fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
_STATS = {  # per-channel mean and std of the training split, on [0, 1]
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_DOWNLOAD_TIMEOUT_S = 30  # so an offline machine fails instead of hanging


class DataError(RuntimeError):
    """A data set that cannot be found or read; the message says how to fix it."""


# --------------------------------------------------------------------- names

def canonical_name(name: str) -> str:
    """'Fashion-MNIST', 'fashion_mnist', 'CIFAR10' ... -> a key of DATASETS."""
    key = str(name).lower().replace("-", "").replace("_", "")
    table = {"fashionmnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
    if key not in table:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return table[key]


def n_classes(name: str) -> int:
    return len(CLASS_NAMES[canonical_name(name)])


def input_shape(name: str) -> tuple[int, int, int]:
    """(C, H, W) of one image."""
    return _SHAPES[canonical_name(name)]


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")
    return split


# ----------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (plain or ``.gz``) into a numpy array.

    The magic number and the declared sizes are checked against the file
    length, so a truncated or foreign file raises DataError naming it.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # missing, unreadable, cut-off gzip
        raise DataError(f"cannot read IDX file {path}: {exc}. Re-download or reinstall it.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}). "
                        "Point the loader at the original Fashion-MNIST files.")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header. Re-download or reinstall it.")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"IDX file {path} has {len(raw)} bytes but its header {dims} implies {expected}: "
                        "the file is truncated or corrupt. Re-download or reinstall it.")
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native order, and a writable copy


def _idx_path(folder: Path, stem: str) -> Path | None:
    # Plain files are preferred because they need no decompression.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_fashion_files(folder: Path) -> bool:
    return all(_idx_path(folder, stem) for pair in FASHION_FILES.values() for stem in pair)


def _fashion_in(root: Path) -> Path | None:
    for sub in FASHION_SUBDIRS:
        folder = root / sub
        if folder.is_dir() and _has_fashion_files(folder):
            return folder
    return None


def _guarded_download(fn, what: str, root: Path, tried: list[str]) -> bool:
    """Run a torchvision download; on failure note why and return False."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        fn()
        return True
    except Exception as exc:  # network errors come in many types; report any of them
        tried.append(f"{root} (torchvision download of {what}): failed: {exc}")
        return False
    finally:
        socket.setdefaulttimeout(old)


def find_fashion_mnist(path=None, download: bool = False) -> Path:
    """Folder holding the four Fashion-MNIST IDX files (gzipped or plain).

    Looks at ``path``, then ``$EXPLORER_DATA``, then the Debian package folder,
    then (only with ``download=True``) torchvision's download into
    ``~/.cache/explorer``. Raises DataError listing every place looked.
    """
    tried: list[str] = []
    places = []
    if path is not None:
        places.append((Path(path).expanduser(), "given path"))
    else:
        tried.append("no path argument given")
    env = os.environ.get(ENV_VAR)
    if env:
        places.append((Path(env).expanduser(), f"${ENV_VAR}"))
    else:
        tried.append(f"${ENV_VAR}: not set")
    places.append((Path(DEBIAN_FASHION_MNIST), "Debian package dataset-fashion-mnist"))
    for root, why in places:
        found = _fashion_in(root)
        if found is not None:
            return found
        state = "no Fashion-MNIST IDX files" if root.is_dir() else "does not exist"
        if why == "given path":  # a path the user names is meant: never fall back silently
            raise DataError(f"Fashion-MNIST not found at the given path {root}: {state} (expected "
                            f"train-images-idx3-ubyte[.gz] and the three other IDX files there, or under "
                            f"FashionMNIST/raw/); fix the path or leave it out to use ${ENV_VAR} or "
                            f"{DEBIAN_FASHION_MNIST}")
        tried.append(f"{root} ({why}): {state}")

    cache = Path(CACHE_DIR).expanduser()
    found = _fashion_in(cache)
    if found is not None:  # an earlier download
        return found
    if download:
        from torchvision.datasets import FashionMNIST

        def fetch():
            for train in (True, False):
                FashionMNIST(str(cache), train=train, download=True)

        if _guarded_download(fetch, "Fashion-MNIST", cache, tried):
            found = _fashion_in(cache)
            if found is not None:
                return found
            tried.append(f"{cache}: download finished but the IDX files are missing")
    else:
        tried.append(f"{cache} (torchvision download): skipped, pass download=True to allow it")
    raise DataError(
        "Fashion-MNIST not found. Looked at:\n  - " + "\n  - ".join(tried) + "\n"
        "Fix: `apt-get install dataset-fashion-mnist`, or set EXPLORER_DATA to a folder holding "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (each plain or .gz, or under FashionMNIST/raw/), "
        + ("or check the network and retry the download." if download else "or allow a download (download=True).")
    )


def load_fashion_mnist(split: str = "train", path=None, download: bool = False):
    """(images uint8 [N,1,28,28], labels int64 [N]) of one Fashion-MNIST split."""
    folder = find_fashion_mnist(path, download=download)
    image_file, label_file = (_idx_path(folder, stem) for stem in FASHION_FILES[_check_split(split)])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_file} holds {images.dtype} {images.shape}, not uint8 [N,28,28] images")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{label_file} holds {labels.dtype} {labels.shape}, "
                        f"not {len(images)} uint8 labels matching {image_file}")
    if labels.size and labels.max() >= 10:
        raise DataError(f"{label_file} has label {labels.max()}, outside 0..9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


# -------------------------------------------------------------- CIFAR pickles

def _numpy_attr(modules: tuple[str, ...], name: str):
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {name}; cannot rebuild arrays from the CIFAR pickle")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and refuses any other global.

    The CIFAR files are pickles; an unrestricted load would run whatever code a
    tampered file names. Old pickles say ``numpy.core``, new ones ``numpy._core``;
    both map to the same functions here.
    """

    _RECONSTRUCT = ("numpy._core.multiarray", "numpy.core.multiarray")
    _NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_attr(RestrictedUnpickler._RECONSTRUCT, "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_attr(RestrictedUnpickler._RECONSTRUCT, "_reconstruct"),
        # Protocol-5 pickles of arrays rebuild them with _frombuffer.
        ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_attr(RestrictedUnpickler._NUMERIC, "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_attr(RestrictedUnpickler._NUMERIC, "_frombuffer"),
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        # Protocol-2 pickles written by Python 3 store bytes as codecs.encode(str, 'latin1').
        ("_codecs", "encode"): lambda: codecs.encode,
        ("codecs", "encode"): lambda: codecs.encode,
    }

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file, encoding="bytes")  # like the CIFAR authors' own loader
        self.source = source

    def find_class(self, module, name):
        factory = self.ALLOWED.get((module, name))
        if factory is None:
            raise DataError(f"{self.source} refers to {module}.{name}, which is not allowed in a data file "
                            "(only numpy arrays are). The file is not a genuine CIFAR batch: "
                            "delete it and download the data set again.")
        return factory()


def read_cifar_pickle(path) -> dict:
    """Load one CIFAR batch/meta file with RestrictedUnpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = RestrictedUnpickler(fh, source=str(path)).load()
    except DataError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read CIFAR file {path}: {exc}. Re-download the data set.") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a CIFAR dict. Re-download the data set.")
    return obj


def find_cifar(name: str = "cifar10", root=None, download: bool = False) -> Path:
    """The ``cifar-10-batches-py`` / ``cifar-100-python`` folder.

    ``root`` may be that folder or its parent. Looks at ``root``, then
    ``$EXPLORER_DATA``, then (only with ``download=True``) torchvision's
    download into ``~/.cache/explorer``.
    """
    name = canonical_name(name)
    if name not in CIFAR_DIRS:
        raise DataError(f"{name} is not a CIFAR data set")
    folder_name = CIFAR_DIRS[name]
    needed = CIFAR_FILES[name]["train"] + CIFAR_FILES[name]["test"]

    def lookup(base: Path) -> Path | None:
        for folder in (base / folder_name, base):
            if folder.name == folder_name and all((folder / f).is_file() for f in needed):
                return folder
        return None

    tried: list[str] = []
    places = []
    if root is not None:
        places.append((Path(root).expanduser(), "given root"))
    else:
        tried.append("no root argument given")
    env = os.environ.get(ENV_VAR)
    if env:
        places.append((Path(env).expanduser(), f"${ENV_VAR}"))
    else:
        tried.append(f"${ENV_VAR}: not set")
    places.append((Path(CACHE_DIR).expanduser(), "earlier download"))
    for base, why in places:
        found = lookup(base)
        if found is not None:
            return found
        tried.append(f"{base} ({why}): no complete {folder_name}/ folder")

    if download:
        from torchvision.datasets import CIFAR10, CIFAR100

        cache = Path(CACHE_DIR).expanduser()
        cls = CIFAR10 if name == "cifar10" else CIFAR100
        if _guarded_download(lambda: cls(str(cache), download=True), name, cache, tried):
            found = lookup(cache)
            if found is not None:
                return found
    else:
        tried.append(f"{Path(CACHE_DIR).expanduser()} (torchvision download): skipped, pass download=True to allow it")
    raise DataError(
        f"{name} not found. Looked at:\n  - " + "\n  - ".join(tried) + "\n"
        f"Fix: set EXPLORER_DATA (or pass root) to the folder that contains {folder_name}/ "
        "(torchvision's extracted python version), "
        + ("or check the network and retry the download." if download else "or allow a download (download=True).")
    )


def load_cifar(name: str = "cifar10", split: str = "train", root=None, download: bool = False):
    """(images uint8 [N,3,32,32], labels int64 [N]) of one CIFAR split."""
    name = canonical_name(name)
    folder = find_cifar(name, root, download=download)
    key = CIFAR_LABEL_KEY[name]
    images, labels = [], []
    for file in CIFAR_FILES[name][_check_split(split)]:
        batch = read_cifar_pickle(folder / file)
        data, targets = batch.get(b"data"), batch.get(key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(f"{folder / file}: b'data' is not a uint8 [N,3072] array. Re-download the data set.")
        if targets is None or len(targets) != len(data):
            raise DataError(f"{folder / file}: {key!r} missing or not one label per image. Re-download the data set.")
        images.append(data)
        labels.append(np.asarray(targets, dtype=np.int64))
    images_np, labels_np = np.concatenate(images), np.concatenate(labels)
    if labels_np.size and (labels_np.min() < 0 or labels_np.max() >= n_classes(name)):
        raise DataError(f"{folder}: labels outside 0..{n_classes(name) - 1}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, row-major.
    return torch.from_numpy(images_np.reshape(-1, 3, 32, 32)), torch.from_numpy(labels_np)


def get_dataset_by_name(name: str, split: str = "train", path=None, download: bool = False):
    """(images uint8 [N,C,H,W], labels int64 [N]) for any name in DATASETS."""
    name = canonical_name(name)
    if name == "fashion_mnist":
        return load_fashion_mnist(split, path, download=download)
    return load_cifar(name, split, path, download=download)


# ------------------------------------------------------------ preprocessing

def make_transform(name: str, train: bool, normalize: bool = True, flip: bool = False,
                   crop_padding: int = 0, randaugment=None):
    """Per-image transform: uint8 [C,H,W] tensor -> float32 [C,H,W].

    Augmentations (``flip``, random crop with ``crop_padding``, ``randaugment``
    as (num_ops, magnitude), e.g. (3, 9)) apply only when ``train`` is true.
    """
    name = canonical_name(name)
    steps = []
    if train:
        if crop_padding:
            steps.append(v2.RandomCrop(_SHAPES[name][1:], padding=int(crop_padding)))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        if randaugment:
            num_ops, magnitude = randaugment
            steps.append(v2.RandAugment(num_ops=int(num_ops), magnitude=int(magnitude)))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        mean, std = _STATS[name]
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 [..., C, H, W] -> float32, scaled to [0, 1] then standardised."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in _STATS[canonical_name(name)])
    return (images.to(torch.float32) / 255.0 - mean) / std


class ImageDataset(Dataset):
    """Images (uint8 [N,C,H,W]) and labels with an optional per-image transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def make_loader(name: str, split: str, batch_size: int, train: bool, path=None, num_workers: int = 0,
                limit: int | None = None, seed: int = 0, download: bool = False,
                **transform_options) -> DataLoader:
    """DataLoader of float32 images and int64 labels.

    ``train`` turns on shuffling (seeded, so runs repeat) and the augmentations
    in ``transform_options`` (see make_transform); ``limit`` keeps the first N
    samples for quick runs.
    """
    images, labels = get_dataset_by_name(name, split, path, download=download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    dataset = ImageDataset(images, labels, make_transform(name, train, **transform_options))
    generator = torch.Generator().manual_seed(seed)  # also seeds the workers' augmentations
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, generator=generator,
                      num_workers=num_workers, persistent_workers=num_workers > 0)


# ---------------------------------------------------------- shipped samples

def load_samples(path=None):
    """(images uint8 [40,1,28,28], labels int64 [40], class names) shipped with the app."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path) if path is not None else SAMPLES_FILE
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise DataError(f"cannot read the sample images {path}: {exc}. "
                        "Regenerate them with scripts/make_sample_assets.py.") from exc
    images, labels = tensors.get("images"), tensors.get("labels")
    if images is None or labels is None or images.dtype != torch.uint8 or images.shape[1:] != (1, 28, 28):
        raise DataError(f"{path} does not hold uint8 [N,1,28,28] 'images' and 'labels'. "
                        "Regenerate it with scripts/make_sample_assets.py.")
    return images, labels.to(torch.int64), list(CLASS_NAMES["fashion_mnist"])
