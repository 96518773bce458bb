"""Tests of explorer.data on small files written here, plus the shipped samples."""
from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from explorer import data


# ------------------------------------------------------------------ helpers

def write_idx(path, array: np.ndarray, gz: bool = False):
    """Write an IDX file (uint8 only, as Fashion-MNIST uses)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fashion(folder, n_train=6, n_test=4, gz=True, seed=0):
    """Four tiny Fashion-MNIST IDX files; returns the (train, test) arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        img_stem, lbl_stem = data.FASHION_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(folder / (img_stem + suffix), images, gz)
        write_idx(folder / (lbl_stem + suffix), labels, gz)
        out[split] = (images, labels)
    return out


def write_cifar(root, name, n_per_batch=3, protocol=2, seed=0):
    """Tiny CIFAR folder in torchvision's pickle format; returns {split: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder = root / data.CIFAR_DIRS[name]
    folder.mkdir(parents=True)
    key = data.CIFAR_LABEL_KEY[name]
    n_cls = data.n_classes(name)
    out = {}
    for split, files in data.CIFAR_FILES[name].items():
        all_data, all_labels = [], []
        for file in files:
            batch_data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, n_cls, n_per_batch)]
            batch = {b"batch_label": f"{file} of tiny test set".encode(), key: labels,
                     b"data": batch_data, b"filenames": [f"img_{i}.png".encode() for i in range(n_per_batch)]}
            if name == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in labels]
            with open(folder / file, "wb") as fh:
                pickle.dump(batch, fh, protocol=protocol)
            all_data.append(batch_data)
            all_labels += labels
        out[split] = (np.concatenate(all_data), all_labels)
    if name == "cifar10":
        meta = {b"label_names": [n.encode() for n in data.CLASS_NAMES["cifar10"]], b"num_cases_per_batch": n_per_batch}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    else:
        meta = {b"fine_label_names": [n.encode() for n in data.CLASS_NAMES["cifar100"]],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return out


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No env var, no Debian folder, an empty cache: only what a test adds exists."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path / "no-cache")
    return tmp_path


# ---------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), array, gz)
    back = data.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_wider_dtype(tmp_path):
    # Big-endian int32 data must come back in native order.
    values = np.array([1, -2, 70000], dtype=np.int32)
    raw = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.astype(">i4").tobytes()
    (tmp_path / "i.idx").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i.idx"), values)


def test_truncated_idx_names_file(tmp_path):
    path = write_idx(tmp_path / "short-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(data.DataError, match="short-idx3-ubyte") as err:
        data.read_idx(path)
    assert "truncated" in str(err.value)


def test_truncated_gzip_names_file(tmp_path):
    path = write_idx(tmp_path / "cut.gz", np.zeros((5, 28, 28), np.uint8), gz=True)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(data.DataError, match="cut.gz"):
        data.read_idx(path)


def test_bad_magic_names_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello world, not an IDX file")
    with pytest.raises(data.DataError, match="notes.txt"):
        data.read_idx(path)


# ----------------------------------------------------------- Fashion-MNIST

def test_find_order(no_data, monkeypatch):
    given, env, debian = no_data / "given", no_data / "env", no_data / "debian"
    for folder in (given, env, debian):
        write_fashion(folder)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", debian)
    assert data.find_fashion_mnist() == debian
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert data.find_fashion_mnist() == env
    assert data.find_fashion_mnist(given) == given
    # An explicit path without the files is an error naming it, never a silent fall-back.
    with pytest.raises(data.DataError, match="given path .*empty"):
        data.find_fashion_mnist(no_data / "empty")


def test_torchvision_layout_and_plain_files(no_data):
    raw = no_data / "root" / "FashionMNIST" / "raw"
    written = write_fashion(raw, gz=False)
    assert data.find_fashion_mnist(no_data / "root") == raw
    images, labels = data.load_fashion_mnist("test", no_data / "root")
    assert images.shape == (4, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images[:, 0].numpy(), written["test"][0])
    np.testing.assert_array_equal(labels.numpy(), written["test"][1])


def test_load_fashion_gz(no_data):
    written = write_fashion(no_data / "fm", gz=True)
    images, labels = data.load_fashion_mnist("train", no_data / "fm")
    assert images.shape == (6, 1, 28, 28)
    np.testing.assert_array_equal(labels.numpy(), written["train"][1])
    with pytest.raises(data.DataError, match="split"):
        data.load_fashion_mnist("valid", no_data / "fm")


def test_missing_data_message_lists_places(no_data, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(no_data / "env-dir"))
    with pytest.raises(data.DataError) as err:
        data.find_fashion_mnist()
    msg = str(err.value)
    for place in ("env-dir", "no-debian", "no-cache", "apt-get install dataset-fashion-mnist",
                  "EXPLORER_DATA", "download=True"):
        assert place in msg, place


def test_labels_mismatch_is_reported(no_data):
    folder = no_data / "fm"
    write_fashion(folder, gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))  # 4 images, 3 labels
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte"):
        data.load_fashion_mnist("test", folder)


# ------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loaders(no_data, name, protocol):
    written = write_cifar(no_data / "root", name, protocol=protocol)
    for split in ("train", "test"):
        images, labels = data.load_cifar(name, split, root=no_data / "root")
        raw, raw_labels = written[split]
        assert images.dtype == torch.uint8 and images.shape == (len(raw), 3, 32, 32)
        assert labels.dtype == torch.int64 and labels.tolist() == raw_labels
        # Channel-first layout: the first 1024 bytes of a row are the red plane.
        np.testing.assert_array_equal(images[0, 0].numpy().ravel(), raw[0, :1024])
    # The meta file is readable too.
    meta = "batches.meta" if name == "cifar10" else "meta"
    assert data.read_cifar_pickle(no_data / "root" / data.CIFAR_DIRS[name] / meta)


def test_cifar_root_lookup(no_data, monkeypatch):
    write_cifar(no_data / "root", "cifar10")
    monkeypatch.setenv(data.ENV_VAR, str(no_data / "root"))
    assert data.find_cifar("cifar10") == no_data / "root" / "cifar-10-batches-py"
    # The batches folder itself also works as root.
    assert data.find_cifar("cifar10", no_data / "root" / "cifar-10-batches-py").name == "cifar-10-batches-py"
    with pytest.raises(data.DataError, match="cifar-100-python"):
        data.load_cifar("cifar100", "train")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_refused(no_data):
    write_cifar(no_data / "root", "cifar10")
    target = no_data / "pwned"
    batch_file = no_data / "root" / "cifar-10-batches-py" / "data_batch_1"
    batch_file.write_bytes(pickle.dumps({b"data": _Evil(target), b"labels": []}))
    with pytest.raises(data.DataError, match="system") as err:
        data.load_cifar("cifar10", "train", root=no_data / "root")
    assert "data_batch_1" in str(err.value)
    assert not target.exists()


def test_pickle_of_other_global_refused(tmp_path):
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros(3, np.uint8), b"x": print}))
    with pytest.raises(data.DataError, match="print"):
        data.read_cifar_pickle(path)


# ----------------------------------------------------------- preprocessing

@pytest.mark.parametrize("name", data.DATASETS)
def test_transforms_shape_and_dtype(name):
    torch.manual_seed(0)
    shape = data.input_shape(name)
    image = torch.randint(0, 256, shape, dtype=torch.uint8)
    plain = data.make_transform(name, train=False)(image)
    assert plain.shape == shape and plain.dtype == torch.float32
    torch.testing.assert_close(plain, data.normalize(image, name))
    augmented = data.make_transform(name, train=True, flip=True, crop_padding=4, randaugment=(3, 9))(image)
    assert augmented.shape == shape and augmented.dtype == torch.float32
    unnormalised = data.make_transform(name, train=False, normalize=False)(image)
    assert 0.0 <= unnormalised.min() and unnormalised.max() <= 1.0


def test_flip_and_crop_act():
    image = torch.arange(28, dtype=torch.uint8).repeat(1, 28, 1)  # columns 0..27
    flipped = {tuple(data.make_transform("fashion_mnist", True, normalize=False, flip=True)(image)[0, 0].tolist())
               for _ in range(20)}
    assert len(flipped) == 2  # both orders seen
    # Without train, augmentations are off.
    same = data.make_transform("fashion_mnist", False, normalize=False, flip=True, crop_padding=4)(image)
    torch.testing.assert_close(same, image.float() / 255)


def test_normalize_batch():
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = data.normalize(images, "cifar10")
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx((1 - 0.4914) / 0.2470, rel=1e-5)


def test_names_and_shapes():
    assert data.n_classes("fashion_mnist") == 10 and data.n_classes("CIFAR-100") == 100
    assert data.input_shape("Fashion-MNIST") == (1, 28, 28) and data.input_shape("cifar10") == (3, 32, 32)
    assert data.CLASS_NAMES["fashion_mnist"][0] == "T-shirt/top" and data.CLASS_NAMES["cifar10"][-1] == "truck"
    with pytest.raises(data.DataError, match="unknown data set"):
        data.n_classes("imagenet")


def test_make_loader(no_data):
    write_fashion(no_data / "fm", n_train=10, n_test=4)
    loader = data.make_loader("fashion_mnist", "train", batch_size=4, train=True, path=no_data / "fm",
                              limit=7, seed=3, flip=True)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 3]
    assert batches[0][0].shape == (4, 1, 28, 28) and batches[0][0].dtype == torch.float32
    again = data.make_loader("fashion_mnist", "train", batch_size=4, train=True, path=no_data / "fm",
                             limit=7, seed=3, flip=True)
    assert [y.tolist() for _, y in again] == [y.tolist() for _, y in batches]  # seeded shuffle
    test = data.make_loader("fashion_mnist", "test", batch_size=8, train=False, path=no_data / "fm")
    (x, y), = list(test)
    assert x.shape == (4, 1, 28, 28)


def test_get_dataset_by_name_cifar(no_data):
    write_cifar(no_data / "root", "cifar100")
    images, labels = data.get_dataset_by_name("cifar100", "test", no_data / "root")
    assert images.shape == (3, 3, 32, 32) and labels.max() < 100


# ------------------------------------------------------------------ samples

def test_shipped_samples():
    images, labels, names = data.load_samples()
    assert images.shape == (40, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and sorted(set(labels.tolist())) == list(range(10))
    assert torch.bincount(labels, minlength=10).tolist() == [4] * 10
    assert names == data.CLASS_NAMES["fashion_mnist"]
    assert images.float().std() > 0  # real pictures, not blanks


def test_missing_samples_file(tmp_path):
    with pytest.raises(data.DataError, match="make_sample_assets"):
        data.load_samples(tmp_path / "none.safetensors")


# ------------------------------------------------- the real Debian data set

def test_real_fashion_mnist(monkeypatch):
    if not data.DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"{data.DEBIAN_FASHION_MNIST} absent (apt-get install dataset-fashion-mnist)")
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data.load_fashion_mnist(split, data.DEBIAN_FASHION_MNIST)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.min() == 0 and labels.max() == 9
    # The shipped samples are the test images they claim to be.
    from safetensors import safe_open

    with safe_open(str(data.SAMPLES_FILE), "pt") as fh:
        indices = [int(i) for i in fh.metadata()["indices"].split(",")]
    samples, sample_labels, _ = data.load_samples()
    assert torch.equal(samples, images[indices]) and torch.equal(sample_labels, labels[indices])


def test_python2_pickle_like_the_real_files(tmp_path):
    # The real CIFAR batches were pickled by Python 2 with numpy.core names and
    # str (not bytes) payloads; this is such a pickle, written opcode by opcode.
    payload = bytes(range(6))
    raw = (b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
           b"K\x00\x85U\x01b\x87Rq\x04(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06"
           b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + payload +
           b"tbU\x06labelsq\x07]q\x08(K\x01K\x02eu.")
    (tmp_path / "batch").write_bytes(raw)
    batch = data.read_cifar_pickle(tmp_path / "batch")
    assert batch[b"labels"] == [1, 2]
    np.testing.assert_array_equal(batch[b"data"], np.arange(6, dtype=np.uint8).reshape(2, 3))
