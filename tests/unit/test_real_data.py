"""Your own images: ImageNet class indices, masks from a mask folder or from boxes, folder hygiene.

The photos are scikit-image's bundled images (offline), shrunk to a few dozen pixels. Expected
labels are ImageNet-1k's published class indices (tabby cat 281, coffee mug 504, space shuttle
812); expected masks are worked out by hand from the resize-and-crop geometry.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from attrflow.config import ConfigError, dataset_provides, validate_config
from attrflow.data.image_folder import ImageFolderError, load_image_folder
from attrflow.data.sample_store import SampleSet, read_samples, write_eval_shard
from attrflow.jobs.prepare import prepare_eval_shard
from attrflow.metrics import MetricInputs, call_metric, get_metric
from attrflow.store import read_attrs

skimage_data = pytest.importorskip("skimage.data")
REPO = Path(__file__).resolve().parents[2]

# WordNet id -> (ImageNet-1k index, scikit-image photo)
PHOTOS = {"n02123045": (281, "chelsea"), "n03063599": (504, "coffee"), "n04266014": (812, "rocket")}
WIDTH, HEIGHT = 90, 60  # every fixture image: 3:2 landscape


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((WIDTH, HEIGHT))


@pytest.fixture
def wnid_folder(tmp_path) -> Path:
    """ImageNet-val style: WordNet-id sub-folders, two photos each, numbered like ILSVRC files."""
    root = tmp_path / "val"
    number = 1
    for wnid, (_, photo) in PHOTOS.items():
        (root / wnid).mkdir(parents=True)
        for flip in (False, True):
            image = _photo(photo)
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image
            image.save(root / wnid / f"ILSVRC2012_val_{number:08d}.JPEG", quality=95)
            number += 1
    return root


def test_wnid_folders_get_the_standard_imagenet_indices(wnid_folder):
    samples, names = load_image_folder(wnid_folder, resize=20, crop=16, classes="imagenet")
    expected = {f"{wnid}/": index for wnid, (index, _) in PHOTOS.items()}
    for sample_id, label in zip(samples.ids, samples.labels.tolist()):
        assert label == expected[sample_id.split("/")[0] + "/"]
    assert len(names) == 1000 and names[281] == "n02123045" and names[812] == "n04266014"
    # without classes: sorted sub-folders indexed 0..k-1 (a model trained on this folder)
    plain, plain_names = load_image_folder(wnid_folder, resize=20, crop=16)
    assert sorted(set(plain.labels.tolist())) == [0, 1, 2] and plain_names == sorted(PHOTOS)
    # an explicit mapping
    mapping = {"n02123045": 3, "n03063599": 0, "n04266014": 7}
    mapped, mapped_names = load_image_folder(wnid_folder, resize=20, crop=16, classes=mapping)
    assert [mapping[i.split("/")[0]] for i in mapped.ids] == mapped.labels.tolist()
    assert len(mapped_names) == 8 and mapped_names[7] == "n04266014" and mapped_names[1] == ""


def test_a_folder_imagenet_cannot_index_is_refused(wnid_folder):
    (wnid_folder / "cats").mkdir()
    _photo("cat").save(wnid_folder / "cats" / "x.png")
    with pytest.raises(ImageFolderError, match=r"1 of 4 class names are not ImageNet-1k WordNet ids.*'cats'"):
        load_image_folder(wnid_folder, resize=20, crop=16, classes="imagenet")


def test_labels_file_names_map_through_the_imagenet_index(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    _photo("chelsea").save(root / "a.png")
    _photo("rocket").save(root / "b.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png n02123045\nb.png n04266014\n")
    samples, names = load_image_folder(root, labels_file=labels, resize=20, crop=16, classes="imagenet")
    assert samples.labels.tolist() == [281, 812] and len(names) == 1000


# ---------------------------------------------------------------------------- config checks


def _config(folder: Path, **dataset) -> dict:
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config["datasets"]["val"] = {"kind": "image_folder", "root": str(folder), "resize": 20, "crop": 16, **dataset}
    config["models"]["r18"] = {"kind": "timm", "name": "resnet18", "dataset": "val"}
    config["run"].update(datasets=["val"], models=["r18"], methods=["gradient"], metrics=["deletion"])
    return config


def test_a_pretrained_imagenet_model_on_sorted_wnid_folders_fails_at_config_time(wnid_folder):
    with pytest.raises(ConfigError) as err:
        validate_config(_config(wnid_folder), workdir=wnid_folder.parent)
    assert err.value.key_path == "datasets.val.classes"
    assert "1000 classes" in str(err.value) and "exactly 3" in str(err.value) and "classes: imagenet" in str(err.value)
    validate_config(_config(wnid_folder, classes="imagenet"), workdir=wnid_folder.parent)


def test_a_mismatched_num_classes_names_the_key_and_both_numbers(wnid_folder):
    config = _config(wnid_folder, classes="imagenet")
    config["models"]["r18"]["num_classes"] = 10
    with pytest.raises(ConfigError) as err:
        validate_config(config, workdir=wnid_folder.parent)
    assert err.value.key_path == "models.r18.num_classes"
    assert "10 classes" in str(err.value) and "exactly 1000" in str(err.value)
    # an explicit mapping needs more classes than its largest index
    config = _config(wnid_folder, classes={"n02123045": 3, "n03063599": 0, "n04266014": 12})
    config["models"]["r18"]["num_classes"] = 10
    with pytest.raises(ConfigError, match="more than 12"):
        validate_config(config, workdir=wnid_folder.parent)
    config["models"]["r18"]["num_classes"] = 13
    validate_config(config, workdir=wnid_folder.parent)


def test_a_model_trained_elsewhere_must_match_the_evaluated_dataset(wnid_folder):
    config = _config(wnid_folder)
    config["run"].update(models=["cnn"], datasets=["tiny", "val"])  # cnn: 4 shape classes; val: 3 folders
    with pytest.raises(ConfigError) as err:
        validate_config(config, workdir=wnid_folder.parent)
    assert err.value.key_path == "models.cnn" and "4 classes" in str(err.value) and "exactly 3" in str(err.value)


def test_n_larger_than_the_folder_is_refused_with_both_numbers(wnid_folder):
    with pytest.raises(ConfigError) as err:
        validate_config(_config(wnid_folder, classes="imagenet", n=7), workdir=wnid_folder.parent)
    assert err.value.key_path == "datasets.val.n" and "n is 7" in str(err.value) and "holds 6 images" in str(err.value)


def test_non_image_files_are_listed_and_mistyped_images_refused(wnid_folder, capsys):
    (wnid_folder / "n02123045" / "notes.txt").write_text("not a sample")
    (wnid_folder / "LOC_synset_mapping.txt").write_text("n02123045 tabby")
    validate_config(_config(wnid_folder, classes="imagenet"), workdir=wnid_folder.parent)
    warning = capsys.readouterr().err
    assert "2 file(s)" in warning and "n02123045/notes.txt" in warning and "LOC_synset_mapping.txt" in warning
    _photo("cat").save(wnid_folder / "n02123045" / "typo.jgp", format="JPEG")
    with pytest.raises(ConfigError) as err:
        validate_config(_config(wnid_folder, classes="imagenet"), workdir=wnid_folder.parent)
    assert err.value.key_path == "datasets.val.root" and "n02123045/typo.jgp" in str(err.value)


# ---------------------------------------------------------------------------- masks and boxes
# A 90×60 photo resized to shorter side 20 is 30×20; the 16-pixel centre crop starts at x = 7,
# y = 2. Its left half (x < 45 in the photo) is x < 15 after resizing, so input columns 0..7.
LEFT_HALF_COLUMNS = 8


def _left_half_expected(n: int) -> np.ndarray:
    expected = np.zeros((n, 16, 16), dtype=bool)
    expected[:, :, :LEFT_HALF_COLUMNS] = True
    return expected


def _annotate(wnid_folder: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A mask folder (palette PNGs, left half = index 1), ImageNet XML boxes and a COCO JSON, all
    marking the left half of every photo."""
    masks, xml, coco = tmp_path / "masks", tmp_path / "xml", tmp_path / "boxes.json"
    xml.mkdir()
    images, annotations = [], []
    for k, path in enumerate(sorted(wnid_folder.rglob("*.JPEG"))):
        relative = path.relative_to(wnid_folder)
        (masks / relative.parent).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        mask[:, : WIDTH // 2] = 1
        Image.fromarray(mask, mode="L").convert("P").save(masks / relative.with_suffix(".png"))
        (xml / f"{path.stem}.xml").write_text(  # ILSVRC's flat layout; 1-based inclusive corners
            f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"
            f"<object><name>{relative.parent}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            f"<xmax>{WIDTH // 2}</xmax><ymax>{HEIGHT}</ymax></bndbox></object></annotation>"
        )
        images.append({"id": k, "file_name": relative.as_posix(), "width": WIDTH, "height": HEIGHT})
        annotations.append({"id": k, "image_id": k, "category_id": 1, "bbox": [0, 0, WIDTH // 2, HEIGHT]})
    coco.write_text(json.dumps({"images": images, "annotations": annotations}))
    return masks, xml, coco


@pytest.mark.parametrize("source", ["masks_root", "imagenet_xml", "coco"])
def test_masks_and_boxes_follow_the_image_geometry_and_feed_the_pointing_game(wnid_folder, tmp_path, source):
    masks_root, xml, coco = _annotate(wnid_folder, tmp_path)
    option = {
        "masks_root": {"masks_root": str(masks_root)},
        "imagenet_xml": {"boxes": {"format": "imagenet_xml", "root": str(xml)}},
        "coco": {"boxes": {"format": "coco", "file": str(coco)}},
    }[source]
    spec = {"kind": "image_folder", "root": str(wnid_folder), "resize": 20, "crop": 16, "classes": "imagenet", **option}
    assert "masks" in dataset_provides(spec)
    out = prepare_eval_shard(name="val", spec=spec, sample_range=[0, 6], shard=0, out_path=tmp_path / "shard-0.zarr")
    samples = read_samples(out)
    np.testing.assert_array_equal(samples.masks, _left_half_expected(6))
    attrs = read_attrs(out)
    assert attrs["num_classes"] == 1000 and attrs["class_names"][504] == "n03063599"
    if source != "masks_root":  # the box geometry, in input pixels: x 0..8 (clipped), y 0..16
        np.testing.assert_allclose(samples.boxes, [[k, 0, 0, 8, 16] for k in range(6)])
    # pointing game on real photos: a map peaking on the object hits, one peaking off it misses
    maps = torch.zeros(6, 16, 16)
    maps[:3, 9, 3] = 1.0  # column 3: inside the left half
    maps[3:, 9, 12] = 1.0  # column 12: outside
    inputs = MetricInputs(
        model=torch.nn.Identity(),
        images=torch.from_numpy(samples.images),
        maps=maps,
        targets=torch.from_numpy(samples.labels),
        labels=torch.from_numpy(samples.labels),
        ids=samples.ids,
        masks=torch.from_numpy(samples.masks),
    )
    values = call_metric(get_metric("pointing_game"), inputs, {}).values
    assert values.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_a_missing_annotation_fails_at_config_time(wnid_folder, tmp_path):
    masks_root, _, _ = _annotate(wnid_folder, tmp_path)
    victim = sorted(masks_root.rglob("*.png"))[0]
    victim.unlink()
    config = _config(wnid_folder, classes="imagenet", masks_root=str(masks_root))
    with pytest.raises(ConfigError) as err:
        validate_config(config, workdir=tmp_path)
    assert err.value.key_path == "datasets.val.masks_root"
    assert "1 of the 6 evaluated images" in str(err.value) and victim.stem in str(err.value)


def test_mask_and_box_files_are_part_of_the_content_fingerprint(wnid_folder, tmp_path):
    from attrflow.content import FileIndex
    from attrflow.data.sources import source_fingerprint

    _, xml, _ = _annotate(wnid_folder, tmp_path)
    spec = {
        "kind": "image_folder",
        "root": str(wnid_folder),
        "classes": "imagenet",
        "boxes": {"format": "imagenet_xml", "root": str(xml)},
    }
    index = FileIndex(tmp_path / "content.sqlite")
    first, second = source_fingerprint(spec, 0, 3, index), source_fingerprint(spec, 3, 6, index)
    last = sorted(xml.glob("*.xml"))[-1]
    last.write_text(last.read_text().replace("<xmin>1</xmin>", "<xmin>2</xmin>"))
    assert source_fingerprint(spec, 0, 3, index) == first  # another shard's box changed
    assert source_fingerprint(spec, 3, 6, index) != second


def test_boxes_survive_a_store_round_trip_and_a_slice(tmp_path):
    images = np.zeros((3, 3, 4, 4), dtype=np.float32)
    boxes = np.array([[0, 0, 0, 2, 2], [2, 1, 1, 4, 4], [2, 0, 0, 1, 1]], dtype=np.float64)
    samples = SampleSet(images, [0, 1, 2], ["a", "b", "c"], np.zeros((3, 4, 4), bool), boxes)
    path = write_eval_shard(tmp_path / "s.zarr", samples, [10, 13], {"dataset": "d"})
    np.testing.assert_array_equal(read_samples(path, start=10).boxes, boxes)
    np.testing.assert_array_equal(read_samples(path, start=12, stop=13).boxes, [[0, 1, 1, 4, 4], [0, 0, 0, 1, 1]])


# ---------------------------------------------------------------------------- timm normalisation


def test_timm_normalisation_comes_from_the_pretrained_config_unless_the_entry_overrides_it():
    timm = pytest.importorskip("timm")
    from attrflow.models.hub import timm_preprocessing

    vit = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    used = timm_preprocessing(vit, {})
    assert used["mean"] == {"value": [0.5, 0.5, 0.5], "from": "pretrained config"}  # not ImageNet's
    assert used["input_size"] == {"value": 224, "from": "pretrained config"}
    assert used["interpolation"]["value"] == "bicubic"
    own = timm_preprocessing(vit, {"mean": [0.1, 0.2, 0.3], "interpolation": "bilinear"})
    assert own["mean"] == {"value": [0.1, 0.2, 0.3], "from": "entry"}
    assert own["interpolation"] == {"value": "bilinear", "from": "entry"}
    assert own["std"]["from"] == "pretrained config"


def test_the_whole_dataset_store_records_the_label_order(wnid_folder, tmp_path):
    from attrflow.jobs.prepare import prepare_dataset_store

    spec = {"kind": "image_folder", "root": str(wnid_folder), "resize": 20, "crop": 16, "classes": "imagenet"}
    out = prepare_dataset_store(name="val", spec=spec, out_path=tmp_path / "samples.zarr")
    attrs = read_attrs(out)
    assert (
        attrs["class_names"][281] == "n02123045" and attrs["preprocessing"]["label_order"] == "ImageNet-1k class index"
    )
    assert copy.deepcopy(attrs["num_classes"]) == 1000


@pytest.mark.parametrize(
    ("name", "meant_as_image"),
    [
        ("a.jgp", True),
        ("a.pgn", True),
        ("a.jpeg2", True),
        ("a.pnng", True),
        ("a.webp", True),
        ("a.TIF", True),
        ("a.jpg ", True),
        ("a.png~", True),
        ("a.txt", False),
        ("a.xml", False),
        ("a.json", False),
        ("README", False),
        ("a.npy", False),
        ("a.log", False),
        ("a.svg", False),
        ("a.JPEG", False),  # the last one is an image
    ],
)
def test_which_stray_files_look_like_images(name, meant_as_image):
    from attrflow.data.image_folder import looks_like_image

    assert looks_like_image(name) is meant_as_image


def test_coco_boxes_name_the_image_without_an_entry(wnid_folder, tmp_path):
    _, _, coco = _annotate(wnid_folder, tmp_path)
    data = json.loads(coco.read_text())
    data["images"] = data["images"][1:]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 0]
    coco.write_text(json.dumps(data))
    config = _config(wnid_folder, classes="imagenet", boxes={"format": "coco", "file": str(coco)})
    with pytest.raises(ConfigError) as err:
        validate_config(config, workdir=tmp_path)
    assert err.value.key_path == "datasets.val.boxes" and "ILSVRC2012_val_00000001" in str(err.value)
