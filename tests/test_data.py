import gzip

import numpy as np
import pytest

from conftest import make_idx_dir, write_idx
from rbd_hpc import data
from rbd_hpc.errors import UserError
from rbd_hpc.partition import share


def test_idx_round_trip_gz_and_raw(tmp_path):
    for gz in (True, False):
        d = make_idx_dir(tmp_path / f"gz{gz}", n_train=50, n_test=20, gz=gz)
        ds = data.load_dataset("fmnist", str(d), seed=0, val_size=10)
        assert ds.train.x.shape == (40, 28, 28, 1) and ds.val.x.shape == (10, 28, 28, 1)
        assert ds.test.y.shape == (20,) and ds.train.x.dtype == np.uint8


def test_validation_split_is_disjoint_and_keyed(tmp_path):
    d = make_idx_dir(tmp_path, n_train=100, n_test=10)
    a = data.load_dataset("mnist", str(d), seed=1, val_size=20)
    b = data.load_dataset("mnist", str(d), seed=1, val_size=20)
    assert np.array_equal(a.val.x, b.val.x)
    rows = {r.tobytes() for r in a.train.x} | {r.tobytes() for r in a.val.x}
    assert len(rows) == 100


def test_cifar_batches(cifar_dir):
    ds = data.load_dataset("cifar10", str(cifar_dir), seed=0, val_size=20)
    assert ds.train.x.shape == (180, 32, 32, 3) and ds.test.x.shape == (40, 32, 32, 3)
    assert ds.shape == (3, 32, 32)


def test_cifar_pickle_cannot_run_code(tmp_path, cifar_dir):
    import pickle
    import shutil

    d = tmp_path / "evil"
    shutil.copytree(cifar_dir, d)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(d / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UserError, match="data_batch_1 is not a valid CIFAR-10 batch"):
        data.load_dataset("cifar10", str(d), seed=0)


def test_missing_file_names_file_and_place(tmp_path):
    d = make_idx_dir(tmp_path, n_train=20, n_test=5)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match=r"missing data file t10k-labels-idx1-ubyte\[.gz\] in .* \(from --data-dir\)"):
        data.load_dataset("fmnist", str(d), seed=0, val_size=2)


def test_a_data_dir_that_is_a_file_is_named_so(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match=r"data directory .*f \(from --data-dir\) is a file, not a directory"):
        data.load_dataset("fmnist", str(tmp_path / "f"), seed=0)


def test_corrupt_files(tmp_path):
    d = make_idx_dir(tmp_path, n_train=20, n_test=5)
    p = d / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-7]))
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz is corrupt"):
        data.load_dataset("fmnist", str(d), seed=0, val_size=2)
    p.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="cannot read"):
        data.load_dataset("fmnist", str(d), seed=0, val_size=2)
    write_idx(d / "train-images-idx3-ubyte", np.zeros((3,), np.uint8), gz=True)
    p.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(UserError, match="not an IDX file"):
        data.load_dataset("fmnist", str(d), seed=0, val_size=2)


def test_default_location_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("RBD_DATA", raising=False)
    assert data.resolve_data_dir("fmnist", None) == (data.Path(data.DEFAULT_FMNIST_DIR), "the default location")
    monkeypatch.setenv("RBD_DATA", str(tmp_path))
    assert data.resolve_data_dir("fmnist", None) == (tmp_path, "$RBD_DATA")
    monkeypatch.delenv("RBD_DATA")
    with pytest.raises(UserError, match="no default location"):
        data.resolve_data_dir("cifar10", None)


def test_epoch_order_keyed_and_shares_partition():
    a = data.epoch_order(3, 0, 100)
    assert np.array_equal(a, data.epoch_order(3, 0, 100))
    assert not np.array_equal(a, data.epoch_order(3, 1, 100))
    batch = a[:32]
    parts = [batch[share(32, r, 4).start:share(32, r, 4).stop] for r in range(4)]
    assert np.array_equal(np.concatenate(parts), batch)
    assert [len(p) for p in parts] == [8, 8, 8, 8]
    # uneven counts: shares differ by at most one and still cover [0, n) in rank order
    assert [(r.start, r.stop) for r in (share(10, k, 4) for k in range(4))] == [
        (0, 2), (2, 5), (5, 7), (7, 10)]


def test_batches_do_not_depend_on_rank_count(tmp_path):
    d = make_idx_dir(tmp_path, n_train=200, n_test=10)
    ds = data.load_dataset("fmnist", str(d), seed=0, val_size=0)
    one = data.BatchStream(ds.train, 5, 32, 0, 1, True, "fmnist").batch(2, 3)
    two = [data.BatchStream(ds.train, 5, 32, r, 2, True, "fmnist").batch(2, 3) for r in range(2)]
    assert np.array_equal(np.concatenate([t[0] for t in two]), one[0])
    assert np.array_equal(np.concatenate([t[1] for t in two]), one[1])


def augment_one_by_one(x, params, pad):
    """The augmentation image by image (rbd-hpc 0.1's loop): the batched gather must equal it."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.empty(x.shape, dtype=np.float32)
    for i, (dy, dx, fl, delta) in enumerate(params):
        img = padded[i, int(dy):int(dy) + h, int(dx):int(dx) + w]
        out[i] = (img[:, ::-1] if fl else img) / np.float32(255.0) + np.float32(delta)
    return out


@pytest.mark.parametrize("shape, pad, flip, brightness", [((32, 28, 28, 1), 3, False, 0.5),
                                                          ((16, 32, 32, 3), 4, True, 0.0)])
def test_batched_augmentation_is_bitwise_the_image_by_image_one(shape, pad, flip, brightness):
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    params = data.augment_params(7, 3, 11, shape[0], pad, flip, brightness)
    fast = data.apply_augmentation(x, params, pad)
    assert fast.dtype == np.float32 and fast.shape == shape
    assert np.array_equal(fast, augment_one_by_one(x, params, pad))
    assert flip == bool(params[:, 2].any())  # the CIFAR case exercises flipped images


def test_augmentation_is_a_translation_plus_brightness():
    x = np.zeros((1, 28, 28, 1), np.uint8)
    x[0, 10, 10] = 255
    params = np.array([[1.0, 5.0, 0.0, 0.25]])  # dy = 1 - 3 = -2, dx = 5 - 3 = +2
    out = data.apply_augmentation(x, params, pad=3)
    assert out[0, 12, 8, 0] == pytest.approx(1.25)
    assert out[0, 0, 0, 0] == pytest.approx(0.25)
