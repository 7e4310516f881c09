"""One entry point from a `datasets:` config entry to sample sets: `prepare_dataset`.

A config entry names its `kind` and that kind's options:

* ``synthetic_shapes`` — the embedded dataset (`attrflow.data.synthetic_shapes`): ``n_train``
  (default 4000; 0 for no train split), ``n_test`` (default 256), ``size`` (default 64),
  ``classes`` (default 8, at most 10), ``seed`` (overrides the run's seed).
* ``synthetic_severity`` — the embedded regression task (`attrflow.data.regression`): scenes
  whose label is a total severity score 0–18 (six zones scored 0–3, BrixIA-like), with per-pixel
  severity maps, lesion masks and lesion boxes; ``n_train`` (default 4000), ``n_test`` (default
  256), ``size`` (default 64, at least 48), ``seed``. Models trained on it are regression models.
* ``image_folder`` — images on disk (`attrflow.data.image_folder`): ``root`` (required),
  ``labels_file``, ``classes`` (``imagenet`` or a mapping name → index; sorted names by default),
  ``resize`` (256), ``crop`` (224), ``n`` (first n images; all by default), ``train_root`` (same
  layout; no train split without it), ``n_train``, and object masks for the evaluation split
  from ``masks_root`` or ``boxes`` (`attrflow.data.annotations`).
* ``cifar`` — local CIFAR python batches (`attrflow.data.cifar`): ``root`` (required),
  ``variant`` (cifar10 | cifar100), ``n`` (first n test images; all 10 000 by default),
  ``n_train`` (first n train images; all by default; 0 for no train split).
* ``broden`` — the Broden dataset of Bau et al., 2017 (`attrflow.data.broden`): ``root``
  (required), ``split`` (train | val; all rows by default), ``n`` (first n rows), ``categories``
  (default all six). Images with per-pixel concept labels for Network Dissection; no classes.
* ``corrupted`` — an ImageNet-C corruption of another entry (`attrflow.data.corruptions`):
  ``of`` (required: that entry's spec, resolved from its name by the planner; not itself
  corrupted), ``corruption`` (required: brightness, saturate or saturation, gaussian_blur,
  defocus_blur, gaussian_noise, shot_noise), ``severity`` (required: 1–5), ``train`` (clean |
  corrupted | none; default clean). The evaluation split is the base's samples — same ids,
  labels and masks — with corrupted pixels; noise is keyed by ``seed`` and each sample's id, so
  the variant stays prefix-stable like its base. As in ImageNet-C only the evaluation data is
  corrupted by default: the train split (references of EG/LPI) stays the base's clean one, so a
  clean/corrupted comparison changes the explained inputs only; ``none`` drops it (saves a copy).

Every kind accepts ``seed`` (the workflow fills in the run's seed); only the synthetic data uses it.
Unknown kinds and unknown or ill-typed options are errors naming the key. `count_eval_samples`
tells how many evaluation samples an entry yields without reading any pixels: the Snakefile
calls it while planning how many attribution shards exist, so this module imports only the
standard library at import time and the heavy modules inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attrflow.data.sample_store import SampleSet

CIFAR_TEST_SIZE = 10_000  # the number of test images of CIFAR-10 and CIFAR-100
SEVERITY_OUTPUTS = ("total_severity",)  # the one output of a model of the regression task

# Every option of every kind, with its default; `None` marks an optional value without default.
REQUIRED = object()
OPTIONS: dict[str, dict[str, Any]] = {
    "synthetic_shapes": {"n_train": 4000, "n_test": 256, "size": 64, "classes": 8, "seed": None},
    "synthetic_severity": {"n_train": 4000, "n_test": 256, "size": 64, "seed": None},
    "image_folder": {
        "root": REQUIRED,
        "labels_file": None,
        "classes": None,
        "masks_root": None,
        "boxes": None,
        "resize": 256,
        "crop": 224,
        "n": None,
        "train_root": None,
        "n_train": None,
        "seed": None,
    },
    "cifar": {"root": REQUIRED, "variant": "cifar10", "n": None, "n_train": None, "seed": None},
    "corrupted": {"of": REQUIRED, "corruption": REQUIRED, "severity": REQUIRED, "train": "clean", "seed": None},
    "broden": {"root": REQUIRED, "split": None, "n": None, "categories": None, "seed": None},
}
INTEGER_OPTIONS = {
    "n_train": 0,
    "n_test": 1,
    "size": 16,
    "classes": 2,
    "seed": 0,
    "resize": 1,
    "crop": 1,
    "n": 1,
    "severity": 1,
}
PATH_OPTIONS = {"root", "labels_file", "train_root", "masks_root"}
CHOICES = {"variant": ("cifar10", "cifar100"), "train": ("clean", "corrupted", "none")}


class DatasetSpecError(ValueError):
    """A dataset config entry is invalid; the message names the key."""


def _options(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The entry's kind and its options with defaults filled in, validated."""
    if not isinstance(spec, dict):
        raise DatasetSpecError(f"a dataset entry must be a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in OPTIONS:
        raise DatasetSpecError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(OPTIONS)}")
    known = OPTIONS[kind]
    unknown = sorted(set(spec) - set(known) - {"kind"})
    if unknown:
        raise DatasetSpecError(
            f"unknown option(s) {unknown} for dataset kind {kind!r}; known: {sorted(known)}"
        )
    options = {}
    for key, default in known.items():
        value = spec.get(key, default)
        if value is REQUIRED:
            raise DatasetSpecError(f"dataset kind {kind!r} needs the option {key!r}")
        if value is not None and key in INTEGER_OPTIONS and not (kind == "image_folder" and key == "classes"):
            if not isinstance(value, int) or isinstance(value, bool) or value < INTEGER_OPTIONS[key]:
                raise DatasetSpecError(
                    f"option {key!r} must be an integer >= {INTEGER_OPTIONS[key]}, got {value!r}"
                )
        if value is not None and key in PATH_OPTIONS and not isinstance(value, str):
            raise DatasetSpecError(f"option {key!r} must be a path string, got {value!r}")
        if kind == "broden" and key == "split" and value not in (None, "train", "val"):
            raise DatasetSpecError(f"option 'split' must be train or val, got {value!r}")
        if key in CHOICES and kind != "broden" and value not in CHOICES[key]:
            raise DatasetSpecError(f"option {key!r} must be one of {list(CHOICES[key])}, got {value!r}")
        options[key] = value
    if kind == "corrupted":
        _check_corruption(options)
    if kind == "image_folder":
        _check_image_folder(options)
    return kind, options


def _check_image_folder(options: dict[str, Any]) -> None:
    from attrflow.data.annotations import AnnotationError, check_boxes_spec

    classes = options["classes"]
    if classes is not None and classes != "imagenet" and not isinstance(classes, dict):
        raise DatasetSpecError(f"option 'classes' must be 'imagenet' or a mapping name -> index, got {classes!r}")
    if options["boxes"] is not None:
        if options["masks_root"] is not None:
            raise DatasetSpecError("give either masks_root or boxes, not both")
        try:
            check_boxes_spec(options["boxes"])
        except AnnotationError as err:
            raise DatasetSpecError(f"option {err}") from None


def _check_corruption(options: dict[str, Any]) -> None:
    from attrflow.data.corruption_catalog import ALIASES, SEVERITIES, SEVERITY_TABLES

    if options["corruption"] not in (*SEVERITY_TABLES, *ALIASES):
        known = ", ".join([*SEVERITY_TABLES, *ALIASES])
        raise DatasetSpecError(f"option 'corruption' must be one of {known}, got {options['corruption']!r}")
    if options["severity"] not in SEVERITIES:
        raise DatasetSpecError(f"option 'severity' must be an integer from 1 to 5, got {options['severity']!r}")
    base = options["of"]
    if not isinstance(base, dict) or base.get("kind") == "corrupted":
        raise DatasetSpecError(
            "option 'of' must be the spec of a dataset entry that is not itself corrupted, "
            f"got {base!r}"
        )


def count_eval_samples(spec: dict[str, Any]) -> int:
    """The number of evaluation samples `prepare_dataset(spec)` yields, without reading pixels."""
    kind, opt = _options(spec)
    if kind == "corrupted":
        return count_eval_samples(opt["of"])
    if kind in ("synthetic_shapes", "synthetic_severity"):
        return opt["n_test"]
    if kind == "broden":
        from attrflow.data.broden import count_broden

        return count_broden(opt["root"], opt["split"], opt["n"])
    if kind == "image_folder":
        from attrflow.data.image_folder import count_images

        available = count_images(opt["root"], flat=opt["labels_file"] is not None)
        return available if opt["n"] is None else min(opt["n"], available)
    return _cifar_count(opt)


def _cifar_count(opt: dict[str, Any]) -> int:
    return CIFAR_TEST_SIZE if opt["n"] is None else min(opt["n"], CIFAR_TEST_SIZE)


def prepare_dataset(
    name: str, spec: dict[str, Any], seed: int
) -> tuple[SampleSet, SampleSet | None, dict[str, Any]]:
    """(evaluation split, train split or None, store attrs) for the config entry `name`.

    The attrs record the dataset name, kind, source (a path or "embedded"), the pre-processing,
    the class names and count, and the entry itself, so a sample store documents its origin.
    """
    try:
        kind, opt = _options(spec)
    except DatasetSpecError as err:
        raise DatasetSpecError(f"datasets.{name}: {err}") from None
    if kind == "corrupted":
        return _corrupted(name, spec, opt, seed)
    if kind == "synthetic_shapes":
        evaluation, train, source, preprocessing, class_names = _synthetic(opt, seed)
    elif kind == "broden":
        evaluation, train, source, preprocessing, class_names = _broden(opt, 0, opt["n"])
    elif kind == "synthetic_severity":
        evaluation, train, source, preprocessing, class_names = _severity(opt, seed)
    elif kind == "image_folder":
        evaluation, train, source, preprocessing, class_names = _image_folder(opt)
    else:
        evaluation, train, source, preprocessing, class_names = _cifar(opt)
    attrs = {
        "dataset": name,
        "kind": kind,
        "source": source,
        "preprocessing": preprocessing,
        "class_names": class_names,
        "num_classes": len(class_names),
        "spec": dict(spec),
    }
    if kind == "synthetic_severity":  # a regression task: models trained on it predict a score
        from attrflow.data.regression import describe

        attrs.update(describe())
    return evaluation, train, attrs


def prepare_eval_range(name: str, spec: dict[str, Any], seed: int, start: int, stop: int) -> SampleSet:
    """Evaluation samples [start, stop) of the config entry `name`, equal to the same rows of
    `prepare_dataset`'s evaluation split but made from their own source files (or, for the
    embedded data, their own random streams) alone."""
    try:
        kind, opt = _options(spec)
    except DatasetSpecError as err:
        raise DatasetSpecError(f"datasets.{name}: {err}") from None
    if kind == "corrupted":
        from attrflow.data.corruptions import canonical_corruption, corrupt
        from attrflow.data.sample_store import SampleSet

        base = prepare_eval_range(f"{name}.of", opt["of"], int(opt["of"].get("seed", seed)), start, stop)
        corrupt_seed = opt["seed"] if opt["seed"] is not None else seed
        corruption = canonical_corruption(opt["corruption"])
        images = corrupt(base.images, corruption, opt["severity"], ids=base.ids, seed=corrupt_seed, stream="eval")
        return SampleSet(images, base.labels, base.ids, base.masks, base.boxes, base.concepts, base.severity)
    if kind == "synthetic_shapes":
        from attrflow.data.synthetic_shapes import generate_shapes

        synthetic_seed = opt["seed"] if opt["seed"] is not None else seed
        shape = {"seed": synthetic_seed, "size": opt["size"], "classes": opt["classes"]}
        return _with_shape_concepts(generate_shapes("test", stop, **shape, start=start), shape, start)
    if kind == "broden":
        return _broden(opt, start, stop)[0]
    if kind == "synthetic_severity":
        from attrflow.data.regression import generate_severity_scenes

        synthetic_seed = opt["seed"] if opt["seed"] is not None else seed
        return generate_severity_scenes("test", stop, seed=synthetic_seed, size=opt["size"], start=start)
    if kind == "image_folder":
        from attrflow.data.image_folder import load_image_folder

        samples, _ = load_image_folder(opt["root"], n=stop, start=start, **_image_folder_options(opt))
        return samples
    from attrflow.data.cifar import load_cifar
    from attrflow.data.sample_store import SampleSet

    evaluation, _, _, _ = load_cifar(opt["root"], variant=opt["variant"], n_test=stop, n_train=0)
    return SampleSet(
        evaluation.images[start:stop], evaluation.labels[start:stop], evaluation.ids[start:stop],
        None if evaluation.masks is None else evaluation.masks[start:stop],
    )


def _corrupted(
    name: str, spec: dict[str, Any], opt: dict[str, Any], seed: int
) -> tuple[SampleSet, SampleSet | None, dict[str, Any]]:
    """The base entry's splits with corrupted pixels; ids, labels and masks unchanged."""
    from attrflow.data.corruptions import canonical_corruption, corrupt, corruption_parameters
    from attrflow.data.sample_store import SampleSet

    base_spec = opt["of"]
    if opt["train"] == "none":  # every base kind reads n_train 0 as "no train split": none is read
        base_spec = {**base_spec, "n_train": 0}
    evaluation, train, base_attrs = prepare_dataset(f"{name}.of", base_spec, int(base_spec.get("seed", seed)))
    corruption = canonical_corruption(opt["corruption"])
    seed = opt["seed"] if opt["seed"] is not None else seed

    def corrupted(samples: SampleSet, stream: str) -> SampleSet:
        images = corrupt(samples.images, corruption, opt["severity"], ids=samples.ids, seed=seed, stream=stream)
        return SampleSet(images, samples.labels, samples.ids, samples.masks, samples.boxes, samples.concepts, samples.severity)

    height, width = evaluation.images.shape[2:]
    preprocessing = {
        **base_attrs["preprocessing"],
        "corruption": {
            "name": corruption,
            "severity": opt["severity"],
            "parameters": corruption_parameters(corruption, opt["severity"], height, width),
            "seed": seed,
            "train_split": opt["train"],
            "definition": "Hendrycks & Dietterich 2019 (ImageNet-C), see attrflow.data.corruptions",
        },
    }
    attrs = {
        **base_attrs,
        "dataset": name,
        "kind": "corrupted",
        "preprocessing": preprocessing,
        "spec": dict(spec),
    }
    if train is not None and opt["train"] == "corrupted":
        train = corrupted(train, "train")
    return corrupted(evaluation, "eval"), train, attrs


def _synthetic(opt: dict[str, Any], seed: int) -> tuple:
    from attrflow.data.synthetic_shapes import class_names, generate_shapes

    seed = opt["seed"] if opt["seed"] is not None else seed
    shape = {"seed": seed, "size": opt["size"], "classes": opt["classes"]}
    evaluation = _with_shape_concepts(generate_shapes("test", opt["n_test"], **shape), shape, 0)
    train = generate_shapes("train", opt["n_train"], **shape) if opt["n_train"] else None
    preprocessing = {
        **shape, "pixel_range": [0.0, 1.0], "masks": "object pixels",
        "concepts": "region, shape, colour, texture per pixel (evaluation split; attrflow.data.concepts)",
    }  # fmt: skip
    return evaluation, train, "embedded", preprocessing, class_names(opt["classes"])


def _with_shape_concepts(samples: SampleSet, shape: dict[str, Any], start: int) -> SampleSet:
    """The embedded samples with their per-pixel concept labels (Network Dissection)."""
    from attrflow.data.concepts import shape_concepts, with_concepts

    concepts = shape_concepts("test", samples.masks, seed=shape["seed"], size=shape["size"], classes=shape["classes"], start=start)
    return with_concepts(samples, concepts)


def _broden(opt: dict[str, Any], start: int, stop: int | None) -> tuple:
    """Broden's images with their concept labels (`attrflow.data.broden`); no train split."""
    from attrflow.data.broden import load_broden

    evaluation, class_names = load_broden(opt["root"], split=opt["split"], n=stop, start=start, categories=opt["categories"])
    preprocessing = {
        "pixel_range": [0.0, 1.0], "split": opt["split"], "categories": opt["categories"] or "all",
        "concepts": "Broden label planes (R + 256·G), nearest-neighbour to the image size",
    }  # fmt: skip
    return evaluation, None, str(Path(opt["root"])), preprocessing, class_names


def _severity(opt: dict[str, Any], seed: int) -> tuple:
    from attrflow.data.regression import generate_severity_scenes

    seed = opt["seed"] if opt["seed"] is not None else seed
    scene = {"seed": seed, "size": opt["size"]}
    evaluation = generate_severity_scenes("test", opt["n_test"], **scene)
    train = generate_severity_scenes("train", opt["n_train"], **scene) if opt["n_train"] else None
    preprocessing = {**scene, "pixel_range": [0.0, 1.0], "masks": "lesion pixels", "severity": "zone scores"}
    return evaluation, train, "embedded", preprocessing, list(SEVERITY_OUTPUTS)


def _image_folder_options(opt: dict[str, Any]) -> dict[str, Any]:
    keys = ("labels_file", "resize", "crop", "classes", "masks_root", "boxes")
    return {key: opt[key] for key in keys}


def _image_folder(opt: dict[str, Any]) -> tuple:
    import logging

    from attrflow.data.image_folder import load_image_folder, non_image_files, resolve_classes

    log = logging.getLogger("attrflow")
    for key in ("root", "train_root"):
        if opt[key] is None:
            continue
        others = non_image_files(opt[key], flat=opt["labels_file"] is not None)
        if others:
            log.warning("%s: %d file(s) that are not images (.jpg, .jpeg, .png) are not samples: %s",
                        opt[key], len(others), ", ".join(others))
    evaluation, class_names = load_image_folder(opt["root"], n=opt["n"], **_image_folder_options(opt))
    train = None
    if opt["train_root"] is not None and opt["n_train"] != 0:
        train_options = {**_image_folder_options(opt), "masks_root": None, "boxes": None}
        train, _ = load_image_folder(opt["train_root"], n=opt["n_train"], class_names=class_names, **train_options)
    preprocessing = {
        "resize_shorter_side": opt["resize"],
        "center_crop": opt["crop"],
        "interpolation": "bilinear (PIL, antialiased)",
        "pixel_range": [0.0, 1.0],
        "label_order": resolve_classes(opt["root"], opt["labels_file"], opt["classes"]).rule,
        "masks": _annotations(opt).describe(),
    }
    return evaluation, train, str(Path(opt["root"])), preprocessing, class_names


def _annotations(opt: dict[str, Any]):
    from attrflow.data.annotations import Annotations

    return Annotations(opt["masks_root"], opt["boxes"])


def class_names_of(spec: dict[str, Any]) -> list[str]:
    """The name of every label index of a dataset entry (its label order), without its pixels."""
    kind, opt = _options(spec)
    if kind == "corrupted":
        return class_names_of(opt["of"])
    if kind == "synthetic_shapes":
        from attrflow.data.synthetic_shapes import class_names

        return class_names(opt["classes"])
    if kind == "broden":
        return ["unlabelled"]
    if kind == "synthetic_severity":
        return list(SEVERITY_OUTPUTS)
    if kind == "image_folder":
        from attrflow.data.image_folder import resolve_classes

        return resolve_classes(opt["root"], opt["labels_file"], opt["classes"]).names
    from attrflow.data.cifar import cifar_class_names

    return cifar_class_names(opt["root"], opt["variant"])


def _cifar(opt: dict[str, Any]) -> tuple:
    from attrflow.data.cifar import load_cifar

    evaluation, train, class_names, folder = load_cifar(
        opt["root"], variant=opt["variant"], n_test=_cifar_count(opt), n_train=opt["n_train"]
    )
    preprocessing = {"variant": opt["variant"], "pixels": "uint8 / 255", "pixel_range": [0.0, 1.0]}
    return evaluation, train, str(folder), preprocessing, class_names
