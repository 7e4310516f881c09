"""Dataset adapters: the embedded shapes, image folders, CIFAR batches and the single entry point."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from attrflow.data.adapters import DatasetSpecError, count_eval_samples, prepare_dataset
from attrflow.data.cifar import CifarError, load_cifar, safe_unpickle
from attrflow.data.image_folder import ImageFolderError, list_images, load_image_folder
from attrflow.data.sample_store import read_samples, write_sample_store
from attrflow.data.synthetic_shapes import SHAPES, generate_shapes

Image = pytest.importorskip("PIL.Image")


# --- synthetic shapes -------------------------------------------------------------------------


def test_shapes_are_deterministic_per_seed():
    a = generate_shapes("test", 12, seed=3)
    b = generate_shapes("test", 12, seed=3)
    c = generate_shapes("test", 12, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.ids == b.ids
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.masks, c.masks)


def test_shapes_train_and_test_splits_differ():
    train = generate_shapes("train", 6, seed=0)
    test = generate_shapes("test", 6, seed=0)
    assert not np.array_equal(train.images, test.images)
    assert train.ids[0] == "train-000000" and test.ids[5] == "test-000005"


def test_shapes_are_prefix_stable_across_chunks():
    """More samples only append: sample i does not depend on n (the chunk size is 256)."""
    short = generate_shapes("test", 10, seed=1)
    long = generate_shapes("test", 300, seed=1)
    np.testing.assert_array_equal(long.images[:10], short.images)
    np.testing.assert_array_equal(long.masks[:10], short.masks)
    np.testing.assert_array_equal(long.labels[:10], short.labels)
    assert long.ids[:10] == short.ids
    # the second chunk holds 4 samples here and 44 above: rendering does not depend on chunk size
    tail = generate_shapes("test", 260, seed=1)
    np.testing.assert_array_equal(tail.images[256:], long.images[256:260])


def test_shapes_dtype_range_shape_and_balanced_labels():
    s = generate_shapes("train", 40, seed=0, size=48, classes=5)
    assert s.images.dtype == np.float32 and s.images.shape == (40, 3, 48, 48)
    assert s.images.min() >= 0.0 and s.images.max() <= 1.0
    assert s.masks.dtype == bool and s.masks.shape == (40, 48, 48)
    assert s.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(s.labels, minlength=5), [8] * 5)


def test_shape_masks_cover_the_object():
    s = generate_shapes("test", 60, seed=2, classes=len(SHAPES))
    area = s.masks.mean(axis=(1, 2))
    assert (area > 0.03).all() and (area < 0.6).all()
    for image, mask in zip(s.images, s.masks):
        inside = image[:, mask]  # (3, pixels in the shape)
        outside = image[:, ~mask]
        # the object is one colour times a mild shading: far from the typical background colour
        object_colour = np.median(inside, axis=1)
        distance_in = np.linalg.norm(inside - object_colour[:, None], axis=0)
        distance_out = np.linalg.norm(outside - object_colour[:, None], axis=0)
        assert np.median(distance_in) < 0.1
        assert np.mean(distance_out > 0.2) > 0.9
        # a textured background: not one flat colour
        assert outside.std(axis=1).max() > 0.03


def test_every_shape_class_renders_distinct_masks():
    """Each class's mask differs from every other's for the same geometry (no aliasing bug)."""
    from attrflow.data.synthetic_shapes import _shape_mask

    grid = (np.arange(64) + 0.5) / 32 - 1.0
    v, u = np.meshgrid(grid * 1.2, grid * 1.2, indexing="ij")
    masks = [_shape_mask(name, u, v) for name in SHAPES]
    for i in range(len(SHAPES)):
        assert masks[i].mean() > 0.05, SHAPES[i]
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.03, (SHAPES[i], SHAPES[j])
    # spot checks of the geometry: the ring has a hole, the cross has empty corners
    ring, cross = masks[SHAPES.index("ring")], masks[SHAPES.index("cross")]
    assert not ring[32, 32] and ring[32, 32 + 22]
    assert not cross[10, 10] and cross[32, 32]


def test_shapes_reject_bad_arguments():
    with pytest.raises(ValueError, match="classes"):
        generate_shapes("test", 2, seed=0, classes=11)
    with pytest.raises(ValueError, match="split"):
        generate_shapes("val", 2, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_shapes("test", 2, seed=-1)


# --- image folder -----------------------------------------------------------------------------


def _write_png(path, width, height, seed):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "val"
    _write_png(root / "cat" / "b.png", 40, 30, 0)
    _write_png(root / "cat" / "d.PNG", 30, 40, 1)
    _write_png(root / "dog" / "a.png", 50, 50, 2)
    _write_png(root / "dog" / "c.jpg", 36, 36, 3)
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_class_layout(class_folders):
    samples, classes = load_image_folder(class_folders, resize=20, crop=16)
    assert classes == ["cat", "dog"]
    # sorted by file name, then path: a (dog), b (cat), c (dog), d (cat)
    assert samples.ids == ["dog/a.png", "cat/b.png", "dog/c.jpg", "cat/d.PNG"]
    np.testing.assert_array_equal(samples.labels, [1, 0, 1, 0])
    assert samples.images.shape == (4, 3, 16, 16) and samples.images.dtype == np.float32
    assert 0.0 <= samples.images.min() and samples.images.max() <= 1.0
    assert samples.masks is None
    first_two, _ = load_image_folder(class_folders, resize=20, crop=16, n=2)
    np.testing.assert_array_equal(first_two.images, samples.images[:2])


def test_image_folder_matches_torchvision_resize_and_center_crop(class_folders):
    transforms = pytest.importorskip("torchvision.transforms")
    samples, _ = load_image_folder(class_folders, resize=20, crop=16)
    pipeline = transforms.Compose([transforms.Resize(20), transforms.CenterCrop(16), transforms.ToTensor()])
    for sample_id, image in zip(samples.ids, samples.images):
        with Image.open(class_folders / sample_id) as pil:
            expected = pipeline(pil.convert("RGB")).numpy()
        np.testing.assert_allclose(image, expected, atol=1e-6)


def test_image_folder_labels_file_layout(tmp_path):
    root = tmp_path / "flat"
    _write_png(root / "img 1.png", 20, 20, 0)
    _write_png(root / "img2.png", 20, 20, 1)
    _write_png(root / "img3.jpeg", 20, 20, 2)
    labels = tmp_path / "labels.txt"
    labels.write_text("# name label\nimg 1.png 4\n\nimg2.png,2\nimg3 0\n")
    samples, classes = load_image_folder(root, labels_file=labels, resize=16, crop=16)
    assert samples.ids == ["img 1.png", "img2.png", "img3.jpeg"]
    np.testing.assert_array_equal(samples.labels, [4, 2, 0])
    assert classes == ["0", "1", "2", "3", "4"]

    named = tmp_path / "named.csv"
    named.write_text("img 1.png,zebra\nimg2.png,ant\nimg3.jpeg,zebra\n")
    samples, classes = load_image_folder(root, labels_file=named, resize=16, crop=16)
    assert classes == ["ant", "zebra"]
    np.testing.assert_array_equal(samples.labels, [1, 0, 1])


def test_image_folder_errors_name_the_culprit(tmp_path, class_folders):
    with pytest.raises(ImageFolderError, match="missing"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFolderError, match="no images"):
        load_image_folder(tmp_path / "empty")
    root = tmp_path / "flat"
    _write_png(root / "x.png", 20, 20, 0)
    _write_png(root / "y.png", 20, 20, 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("x.png 0\n")
    with pytest.raises(ImageFolderError, match="'y.png'"):
        load_image_folder(root, labels_file=labels, resize=16, crop=16)
    (class_folders / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageFolderError, match="broken.png"):
        load_image_folder(class_folders, resize=16, crop=16)
    with pytest.raises(ImageFolderError, match="crop"):
        load_image_folder(root, labels_file=labels, resize=16, crop=32)


def test_counting_a_large_folder_lists_names_only(tmp_path):
    """Counting reads directory entries only; 50 000 names take ~25 ms on an idle 2-core machine."""
    root = tmp_path / "big"
    for k in range(4):
        folder = root / f"class{k}"
        folder.mkdir(parents=True)
        for i in range(500):
            os.close(os.open(folder / f"ILSVRC2012_val_{k * 500 + i:08d}.JPEG", os.O_CREAT | os.O_WRONLY))
    (root / "class0" / ".hidden.JPEG").touch()
    (root / "class0" / "readme.txt").touch()
    spec = {"kind": "image_folder", "root": str(root)}
    started = time.perf_counter()
    assert count_eval_samples(spec) == 2000
    assert time.perf_counter() - started < 0.25  # 100× margin: catches a per-file open creeping in
    assert count_eval_samples({**spec, "n": 100}) == 100
    assert count_eval_samples({**spec, "n": 5000}) == 2000
    listed = list_images(root, flat=False)
    assert len(listed) == 2000 and listed[:2] == [
        "class0/ILSVRC2012_val_00000000.JPEG",
        "class0/ILSVRC2012_val_00000001.JPEG",
    ]


# --- CIFAR ------------------------------------------------------------------------------------


def _write_batch(path, data, labels, label_key):
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"fake", label_key: list(labels), b"data": data}, fh)


@pytest.fixture
def cifar10_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        _write_batch(folder / f"data_batch_{k}", data, [k % 10] * 4, b"labels")
    test = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    _write_batch(folder / "test_batch", test, [0, 1, 2, 3, 4, 9], b"labels")
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": 4}, fh)
    return tmp_path, test


def test_cifar10_layout_labels_and_pixel_order(cifar10_root):
    root, data = cifar10_root
    test, train, names, folder = load_cifar(root, variant="cifar10", n_test=6, n_train=10)
    assert names[0] == "airplane" and len(names) == 10
    assert folder.name == "cifar-10-batches-py"
    np.testing.assert_array_equal(test.labels, [0, 1, 2, 3, 4, 9])
    assert test.images.shape == (6, 3, 32, 32) and test.images.dtype == np.float32
    for i, c, h, w in [(0, 0, 0, 0), (1, 1, 5, 7), (5, 2, 31, 30), (3, 0, 17, 2)]:
        assert test.images[i, c, h, w] == np.float32(data[i, c * 1024 + h * 32 + w] / 255.0)
    # train: the first 10 samples over batches 1..3, in order
    assert len(train) == 10
    np.testing.assert_array_equal(train.labels, [1] * 4 + [2] * 4 + [3] * 2)
    assert train.ids[0] == "train-00000" and test.ids[5] == "test-00005"


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    with open(folder / "test", "wb") as fh:
        pickle.dump({b"data": data, b"fine_labels": [57, 3], b"coarse_labels": [1, 2]}, fh)
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": data, b"fine_labels": [99, 0], b"coarse_labels": [1, 2]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"c{k}".encode() for k in range(100)]}, fh)
    test, train, names, _ = load_cifar(folder, variant="cifar100", n_test=2, n_train=None)
    np.testing.assert_array_equal(test.labels, [57, 3])
    np.testing.assert_array_equal(train.labels, [99, 0])
    assert len(names) == 100


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official CIFAR files are: Python 2 protocol 2, byte strings,
    and the array rebuilt by numpy 1's `numpy.core.multiarray._reconstruct`, written opcode by
    opcode (Python 3 cannot produce this form itself)."""

    def short(s: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(s)]) + s

    def integer(d: int) -> bytes:  # BININT1 / BININT2
        return b"K" + bytes([d]) if d < 256 else b"M" + d.to_bytes(2, "little")

    minus_one = b"J\xff\xff\xff\xff"
    dtype = b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
    dtype += b"(K\x03" + short(b"|") + b"NNN" + minus_one + minus_one + b"K\x00tb"
    shape = b"(" + b"".join(integer(d) for d in data.shape) + b"t"
    raw = b"T" + data.nbytes.to_bytes(4, "little") + data.tobytes()
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
    array += b"(K\x01" + shape + dtype + b"\x89" + raw + b"tb"
    items = short(b"data") + array + short(b"labels") + b"](" + b"".join(integer(v) for v in labels) + b"e"
    return b"\x80\x02}(" + items + b"u."


def test_cifar_reads_python2_pickles_like_the_official_files(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, size=(3, 3072), dtype=np.uint8)
    path = tmp_path / "test_batch"
    path.write_bytes(_python2_batch(data, [3, 7, 9]))
    batch = safe_unpickle(path)
    np.testing.assert_array_equal(batch[b"data"], data)
    assert batch[b"labels"] == [3, 7, 9]


def test_cifar_unpickler_refuses_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "test_batch"
    evil.write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(CifarError, match=r"test_batch.*(posix|os|nt)\.system"):
        safe_unpickle(evil)
    # numpy functions other than the array reconstructor are refused too
    other = tmp_path / "other"
    other.write_bytes(pickle.dumps({b"x": np.save}))
    with pytest.raises(CifarError, match="numpy.save"):
        safe_unpickle(other)


def test_cifar_errors(cifar10_root, tmp_path):
    root, _ = cifar10_root
    with pytest.raises(CifarError, match="fewer than the 8"):
        load_cifar(root, variant="cifar10", n_test=8, n_train=0)
    with pytest.raises(CifarError, match="test_batch"):
        load_cifar(tmp_path / "nowhere", variant="cifar10", n_test=1)


# --- the entry point --------------------------------------------------------------------------


def test_prepare_synthetic_and_roundtrip_through_the_store(tmp_path):
    spec = {"kind": "synthetic_shapes", "n_train": 8, "n_test": 5, "size": 32, "classes": 4}
    evaluation, train, attrs = prepare_dataset("shapes", spec, seed=7)
    assert len(evaluation) == count_eval_samples(spec) == 5 and len(train) == 8
    assert attrs["dataset"] == "shapes" and attrs["kind"] == "synthetic_shapes"
    assert attrs["source"] == "embedded" and attrs["spec"] == spec
    assert attrs["class_names"] == ["circle", "square", "triangle", "star"] and attrs["num_classes"] == 4
    assert attrs["preprocessing"]["seed"] == 7
    np.testing.assert_array_equal(
        evaluation.images, generate_shapes("test", 5, seed=7, size=32, classes=4).images
    )
    # the entry's own seed overrides the run's
    overridden, _, _ = prepare_dataset("shapes", {**spec, "seed": 1}, seed=7)
    np.testing.assert_array_equal(
        overridden.images, generate_shapes("test", 5, seed=1, size=32, classes=4).images
    )

    store = write_sample_store(tmp_path / "samples.zarr", evaluation, train, attrs)
    back = read_samples(store)
    np.testing.assert_array_equal(back.images, evaluation.images)
    np.testing.assert_array_equal(back.labels, evaluation.labels)
    np.testing.assert_array_equal(back.masks, evaluation.masks)
    assert back.ids == evaluation.ids
    back_train = read_samples(store, split="train", start=2, stop=6)
    np.testing.assert_array_equal(back_train.images, train.images[2:6])


def test_prepare_image_folder_and_cifar_match_their_counts(class_folders, cifar10_root, tmp_path):
    folder_spec = {"kind": "image_folder", "root": str(class_folders), "resize": 20, "crop": 16, "n": 3}
    evaluation, train, attrs = prepare_dataset("val", folder_spec, seed=0)
    assert len(evaluation) == count_eval_samples(folder_spec) == 3 and train is None
    assert attrs["class_names"] == ["cat", "dog"] and attrs["source"] == str(class_folders)
    assert count_eval_samples({**folder_spec, "n": None}) == 4
    with_train = prepare_dataset(
        "val", {**folder_spec, "train_root": str(class_folders), "n_train": 2}, seed=0
    )
    assert len(with_train[1]) == 2

    root, _ = cifar10_root
    cifar_spec = {"kind": "cifar", "root": str(root), "n": 6, "n_train": 0}
    evaluation, train, attrs = prepare_dataset("cifar", cifar_spec, seed=0)
    assert len(evaluation) == count_eval_samples(cifar_spec) == 6 and train is None
    assert attrs["num_classes"] == 10
    assert count_eval_samples({"kind": "cifar", "root": "/nowhere"}) == 10_000
    store = write_sample_store(tmp_path / "cifar.zarr", evaluation, train, attrs)
    np.testing.assert_array_equal(read_samples(store).images, evaluation.images)


def test_bad_specs_name_the_key():
    with pytest.raises(DatasetSpecError, match="'imagenet_lmdb'"):
        count_eval_samples({"kind": "imagenet_lmdb"})
    with pytest.raises(DatasetSpecError, match="datasets.shapes.*'n_tset'"):
        prepare_dataset("shapes", {"kind": "synthetic_shapes", "n_tset": 3}, seed=0)
    with pytest.raises(DatasetSpecError, match="'n_test'"):
        count_eval_samples({"kind": "synthetic_shapes", "n_test": 0})
    with pytest.raises(DatasetSpecError, match="'root'"):
        count_eval_samples({"kind": "image_folder"})
    with pytest.raises(DatasetSpecError, match="'variant'"):
        count_eval_samples({"kind": "cifar", "root": "/x", "variant": "cifar20"})


def test_adapters_import_without_heavy_modules():
    code = (
        "import sys; import attrflow.data.adapters as a; "
        "a.count_eval_samples({'kind': 'synthetic_shapes'}); "
        "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_every_kind_accepts_the_run_seed(class_folders, cifar10_root):
    """The workflow adds the run's seed to every dataset entry; data on disk ignores it."""
    root, _ = cifar10_root
    for spec in (
        {"kind": "image_folder", "root": str(class_folders), "resize": 20, "crop": 16, "seed": 3},
        {"kind": "cifar", "root": str(root), "n": 2, "n_train": 0, "seed": 3},
    ):
        evaluation, _, _ = prepare_dataset("d", spec, seed=0)
        assert len(evaluation) == count_eval_samples(spec)
