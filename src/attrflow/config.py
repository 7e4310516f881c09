"""Load and check a configuration before any job runs.

Checks, in order, each failing with a `ConfigError` that names the key path:

1. the JSON schema (`attrflow/schemas/config.schema.yaml`, shipped inside the package): structure, types, ranges, unknown keys;
2. the selection (`run:`) names entries that exist, and models name datasets that exist;
3. each method/metric entry's `fn` is registered, and its other keys are that function's
   parameters with valid values (the schema its typed signature declares, `attrflow.params`,
   read from `attrflow.catalog` without importing torch);
4. files the selected entries point to exist;
5. image folders: their classes resolve (``classes: imagenet`` needs WordNet-id names), ``n``
   does not exceed the images there, no file looks like a mistyped image (other files are
   listed in a warning), every evaluated image has its mask or box annotation;
6. every selected model's class count fits the label space of every dataset it runs on
   (`model_class_count` says where a model's count comes from).

Defaults are filled in, so what reaches a job (and its provenance) is the complete setting.
Only stdlib, yaml and jsonschema are imported: the Snakefile calls this on every invocation.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from attrflow.catalog import catalog
from attrflow.params import METHOD_ENTRY_FORMAT, object_schema, validator

# Inside the package, so a non-editable `pip install .` validates and plans like a checkout.
SCHEMA_PATH = Path(str(resources.files("attrflow") / "schemas" / "config.schema.yaml"))
# Keys every entry may carry besides its function's parameters: how maps are stored, how many
# samples a costly entry is limited to (the first N, so results stay comparable across entries),
# which of the selected models and datasets a method runs on, and which methods a metric scores.
GENERIC_METHOD_KEYS = {"fn", "keep_channels", "samples", "models", "datasets", "shards_per_job"}
GENERIC_METRIC_KEYS = {"fn", "samples", "methods", "retest"}
def dataset_provides(spec: dict, datasets: dict | None = None) -> set[str]:
    """What a dataset entry can give to metrics (`requires=[...]`) and methods (`references=...`).

    A `corrupted` entry provides what its base does: `of` is the base's spec, or its name in
    the `datasets` catalogue.
    """
    kind = spec["kind"]
    if kind == "corrupted":
        base = spec["of"] if isinstance(spec["of"], dict) else (datasets or {})[spec["of"]]
        provided = dataset_provides(base, datasets)
        return provided - {"train_split"} if spec.get("train") == "none" else provided
    if kind == "synthetic_shapes":
        return {"masks", "train_split", "concepts"}
    if kind == "synthetic_severity":  # the embedded regression task (attrflow.data.regression)
        return {"masks", "train_split", "severity"}
    if kind == "cifar":
        return {"train_split"}
    if kind == "broden":
        return {"concepts"}
    provided = {"train_split"} if spec.get("train_root") else set()
    if spec.get("masks_root") is not None or spec.get("boxes") is not None:
        provided.add("masks")
    return provided


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.key_path = path
        self.detail = message
        super().__init__(f"config error at '{path}': {message}" if path else f"config error: {message}")


class ParameterError(ConfigError):
    """A method's or metric's parameters given in Python (`attrflow.explain`, `attrflow.score`)
    fail the check a config entry gets (`check_entry`); same message, key path `<fn>.<key>`."""

    def __init__(self, path: str, message: str) -> None:
        ValueError.__init__(self, f"invalid parameter at '{path}': {message}")
        self.key_path = path
        self.detail = message


def _key_path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


def _validator(schema: dict) -> Any:
    """A Draft 2020-12 validator (numbers finite) that also fills `default:` values into the instance."""
    return validator(schema, fill_defaults=True)


def _check(instance: dict, schema: dict, where: list[str]) -> None:
    import jsonschema

    errors = list(_validator(schema).iter_errors(instance))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_key_path([*where, *err.absolute_path]), err.message)


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(path.read_text())


GENERIC_KEYS = {"methods": GENERIC_METHOD_KEYS, "metrics": GENERIC_METRIC_KEYS}


def check_entry(family: str, entry_name: str, entry: dict) -> dict:
    """Check one method or metric entry (``{"fn": ..., **params}``) against the parameters its
    function declares (`attrflow.params`); return it with defaults filled in. Errors name
    ``family.entry_name.key``."""
    registered = catalog(family)
    fn = entry.get("fn")
    if fn not in registered:
        known = ", ".join(sorted(registered)) or "(none)"
        raise ConfigError(f"{family}.{entry_name}.fn", f"unknown function {fn!r}; registered: {known}")
    checked = copy.deepcopy(entry)
    _check(checked, object_schema(registered[fn].params, sorted(GENERIC_KEYS[family])), [family, entry_name])
    return checked


def _check_entries(config: dict, family: str) -> None:
    for entry_name in config[family]:
        config[family][entry_name] = check_entry(family, entry_name, config[family][entry_name])


def _check_selection(config: dict) -> None:
    run = config["run"]
    for family in ("datasets", "models", "methods", "metrics"):
        for i, name in enumerate(run[family]):
            if name not in config[family]:
                known = ", ".join(sorted(config[family]))
                raise ConfigError(f"run.{family}[{i}]", f"{name!r} is not an entry of '{family}' (have: {known})")
    for i, name in enumerate(run.get("axioms", [])):
        if name not in config.get("axioms", {}):
            raise ConfigError(f"run.axioms[{i}]", f"{name!r} is not an entry of 'axioms'")
    for i, name in enumerate(run.get("axiom_methods", [])):
        if name not in config["methods"]:
            raise ConfigError(f"run.axiom_methods[{i}]", f"{name!r} is not an entry of 'methods'")
    # An axiom model need not be in run.models: a model trained for the axioms only (e.g. one whose
    # head can saturate) then costs its training and its axiom jobs, not every method and metric.
    for i, name in enumerate(run.get("axiom_models", [])):
        if name not in config["models"]:
            known = ", ".join(sorted(config["models"]))
            raise ConfigError(f"run.axiom_models[{i}]", f"{name!r} is not an entry of 'models' (have: {known})")
    for name in run["metrics"]:
        for i, method in enumerate(config["metrics"][name].get("methods", [])):
            if method not in config["methods"]:
                raise ConfigError(f"metrics.{name}.methods[{i}]", f"{method!r} is not an entry of 'methods'")
    for name in run["methods"]:
        for family in ("models", "datasets"):
            # a method may also name the models the axiom inputs are synthesised for
            selected = run[family] + (run.get("axiom_models", []) if family == "models" else [])
            for i, chosen in enumerate(config["methods"][name].get(family, [])):
                if chosen not in selected:
                    raise ConfigError(
                        f"methods.{name}.{family}[{i}]",
                        f"{chosen!r} is not selected in run.{family} ({', '.join(run[family])})",
                    )
    for name, spec in config["models"].items():
        ds = spec.get("dataset")
        if ds is not None and ds not in config["datasets"]:
            raise ConfigError(f"models.{name}.dataset", f"{ds!r} is not an entry of 'datasets'")


def _check_requirements(config: dict) -> None:
    registered = catalog("metrics")
    for i, metric in enumerate(config["run"]["metrics"]):
        needs = set(registered[config["metrics"][metric]["fn"]].options.get("requires", []))
        for dataset in config["run"]["datasets"]:
            spec = config["datasets"][dataset]
            missing = needs - dataset_provides(spec, config["datasets"])
            if missing:
                raise ConfigError(
                    f"run.metrics[{i}]",
                    f"metric {metric!r} needs {', '.join(sorted(missing))}, which dataset {dataset!r} "
                    f"(kind {spec['kind']}) does not provide; select it only with datasets that do",
                )
    methods = catalog("methods")
    for i, method in enumerate(config["run"]["methods"]):
        kind = methods[config["methods"][method]["fn"]].options.get("references")
        if kind is None:
            continue
        for dataset in config["run"]["datasets"]:
            if "train_split" not in dataset_provides(config["datasets"][dataset], config["datasets"]):
                raise ConfigError(
                    f"run.methods[{i}]",
                    f"method {method!r} draws {kind!r} references from a train split, which dataset "
                    f"{dataset!r} does not have (an image_folder needs train_root)",
                )


def _check_peer_entries(config: dict) -> None:
    """A selected metric parameter that names a method entry (``"format": "method-entry"``,
    e.g. the exact Shapley values `shapley_spearman` compares with) must name one that exists."""
    registered = catalog("metrics")
    for metric in config["run"]["metrics"]:
        entry = config["metrics"][metric]
        for key, schema in registered[entry["fn"]].params.items():
            if schema.get("format") != METHOD_ENTRY_FORMAT:
                continue
            named = entry.get(key, schema.get("default"))
            if named not in config["methods"]:
                raise ConfigError(
                    f"metrics.{metric}.{key}",
                    f"{named!r} is not an entry of 'methods'; it must name the method entry whose "
                    f"stored maps metric {metric!r} compares with",
                )


def _check_lpi_layout(config: dict) -> None:
    """An `lpi` entry reads its references in blocks of `sub_clusters`: both settings must agree."""
    built = config.get("references", {}).get("lpi", {}).get("sub_clusters", 20)
    for name, entry in config["methods"].items():
        if entry["fn"] == "lpi" and entry.get("sub_clusters", 20) != built:
            raise ConfigError(
                f"methods.{name}.sub_clusters",
                f"{entry.get('sub_clusters', 20)} differs from references.lpi.sub_clusters ({built}); set both alike",
            )


def _check_corrupted_datasets(config: dict) -> None:
    """A `corrupted` entry's `of` names an entry that is not itself corrupted (no chains, no cycles)."""
    for name, spec in config["datasets"].items():
        if spec["kind"] != "corrupted":
            continue
        base = spec["of"]
        if base not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"]))
            raise ConfigError(f"datasets.{name}.of", f"{base!r} is not an entry of 'datasets' (have: {known})")
        if config["datasets"][base]["kind"] == "corrupted":
            raise ConfigError(
                f"datasets.{name}.of",
                f"{base!r} is itself corrupted; name the clean entry it corrupts ({config['datasets'][base]['of']!r})",
            )


def _check_roar(config: dict) -> None:
    """ROAR names existing method entries with a random control, selected models, train splits."""
    from attrflow.plan import fraction_label

    roar = config.get("roar")
    if not roar:
        return
    for i, method in enumerate(roar["methods"]):
        if method not in config["methods"]:
            raise ConfigError(f"roar.methods[{i}]", f"{method!r} is not an entry of 'methods'")
    if not any(config["methods"][m]["fn"] == "random_attribution" for m in roar["methods"]):
        raise ConfigError(
            "roar.methods",
            "no random_attribution entry: ROAR needs the random-map control (e.g. add 'random' "
            "with fn: random_attribution to methods and to roar.methods)",
        )
    for i, model in enumerate(roar.get("models", [])):
        if model not in config["run"]["models"]:
            raise ConfigError(f"roar.models[{i}]", f"{model!r} is not selected in run.models")
    for dataset in config["run"]["datasets"]:
        if "train_split" not in dataset_provides(config["datasets"][dataset]):
            raise ConfigError(
                "roar",
                f"dataset {dataset!r} has no train split to retrain on (an image_folder needs train_root)",
            )
    labels = [fraction_label(f) for f in roar["fractions"]]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise ConfigError(f"roar.fractions[{i}]", f"{roar['fractions'][i]} equals an earlier fraction to 6 decimals")


def _check_dissection(config: dict) -> None:
    """Network Dissection names model entries and datasets with concept labels. Without
    `dissection.datasets`, the selected datasets that have concept labels are dissected (none: no job)."""
    section = config.get("dissection")
    if not section:
        return
    for i, model in enumerate(section.get("models", [])):
        if model not in config["models"]:
            known = ", ".join(sorted(config["models"]))
            raise ConfigError(f"dissection.models[{i}]", f"{model!r} is not an entry of 'models' (have: {known})")
    for i, dataset in enumerate(section.get("datasets", [])):
        if dataset not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"]))
            raise ConfigError(f"dissection.datasets[{i}]", f"{dataset!r} is not an entry of 'datasets' (have: {known})")
        spec = config["datasets"][dataset]
        if "concepts" not in dataset_provides(spec, config["datasets"]):
            raise ConfigError(
                f"dissection.datasets[{i}]",
                f"dataset {dataset!r} (kind {spec['kind']}) has no per-pixel concept labels; Network Dissection "
                "needs them (the embedded synthetic_shapes has them; see README, Network Dissection)",
            )


def _check_axioms(config: dict) -> None:
    """Axiom entries must be able to run on every selected model (two classes, patches that fit)."""
    from attrflow.axioms.settings import axiom_problems

    for key, message in axiom_problems(config):
        raise ConfigError(key, message)


def _check_paths(config: dict, workdir: Path) -> None:
    run = config["run"]
    datasets = set(run["datasets"])
    datasets.update((config.get("dissection") or {}).get("datasets", []))  # e.g. Broden, dissection only
    for name in run["models"]:
        spec = config["models"][name]
        if spec.get("dataset"):
            datasets.add(spec["dataset"])
        if "checkpoint" in spec:
            _must_exist(workdir, spec["checkpoint"], f"models.{name}.checkpoint", file=True)
    # A corrupted variant reads its base entry's files.
    datasets.update(config["datasets"][d]["of"] for d in list(datasets) if config["datasets"][d]["kind"] == "corrupted")
    for name in sorted(datasets):
        spec = config["datasets"][name]
        for key in ("root", "train_root"):
            if key in spec:
                _must_exist(workdir, spec[key], f"datasets.{name}.{key}", file=False)
        if "labels_file" in spec:
            _must_exist(workdir, spec["labels_file"], f"datasets.{name}.labels_file", file=True)
        if "masks_root" in spec:
            _must_exist(workdir, spec["masks_root"], f"datasets.{name}.masks_root", file=False)
        boxes = spec.get("boxes") or {}
        if "root" in boxes:
            _must_exist(workdir, boxes["root"], f"datasets.{name}.boxes.root", file=False)
        if "file" in boxes:
            _must_exist(workdir, boxes["file"], f"datasets.{name}.boxes.file", file=True)


def _used_datasets(config: dict) -> list[str]:
    """Selected datasets, the datasets of selected models, and the bases of corrupted ones."""
    used = set(config["run"]["datasets"])
    used.update(config["models"][m]["dataset"] for m in config["run"]["models"] if config["models"][m].get("dataset"))
    used.update(config["datasets"][d]["of"] for d in list(used) if config["datasets"][d]["kind"] == "corrupted")
    return sorted(used)


def _resolved(workdir: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else workdir / path


def _check_image_folders(config: dict, workdir: Path) -> None:
    """Classes, sample count, stray files and annotations of every image folder a run reads."""
    import sys

    from attrflow.data.annotations import AnnotationError, Annotations
    from attrflow.data.image_folder import (
        ImageFolderError,
        list_images,
        looks_like_image,
        non_image_files,
        resolve_classes,
    )

    for name in _used_datasets(config):
        spec = config["datasets"][name]
        if spec["kind"] != "image_folder":
            continue
        key = f"datasets.{name}"
        flat = spec.get("labels_file") is not None
        root = _resolved(workdir, spec["root"])
        try:
            resolve_classes(root, _resolved(workdir, spec.get("labels_file")), spec.get("classes"))
        except ImageFolderError as err:
            where = "classes" if spec.get("classes") is not None else ("labels_file" if flat else "root")
            raise ConfigError(f"{key}.{where}", str(err)) from None
        for folder_key in ("root", "train_root"):
            folder = _resolved(workdir, spec.get(folder_key))
            if folder is None:
                continue
            others = non_image_files(folder, flat)
            suspicious = [f for f in others if looks_like_image(f.rsplit("/", 1)[-1])]
            if suspicious:
                raise ConfigError(
                    f"{key}.{folder_key}",
                    f"{len(suspicious)} file(s) in {folder} look like images but do not end in .jpg, .jpeg "
                    f"or .png, so they would be left out: {_first(suspicious)}; rename or convert them, or "
                    "move them out of the folder",
                )
            if others:
                print(
                    f"attrflow: warning: {key}.{folder_key}: {len(others)} file(s) in {folder} are not images "
                    f"and are not samples: {_first(others)}",
                    file=sys.stderr,
                )
        try:
            files = list_images(root, flat)
        except ImageFolderError as err:
            raise ConfigError(f"{key}.root", str(err)) from None
        if spec.get("n") is not None and spec["n"] > len(files):
            raise ConfigError(
                f"{key}.n",
                f"n is {spec['n']} but {root} holds {len(files)} images; lower n or leave it out (all images)",
            )
        evaluated = files[: spec.get("n")]
        boxes = spec.get("boxes")
        if boxes is not None:
            boxes = {k: (str(_resolved(workdir, v)) if k in ("root", "file") else v) for k, v in boxes.items()}
        masks_root = _resolved(workdir, spec.get("masks_root"))
        where = f"{key}.masks_root" if masks_root is not None else f"{key}.boxes"
        try:
            annotations = Annotations(None if masks_root is None else str(masks_root), boxes)
        except AnnotationError as err:
            raise ConfigError(where, str(err)) from None
        if not annotations.provides_masks:
            continue
        missing = []
        for f in evaluated:
            try:
                annotations.files_for(f)
                if annotations.boxes is not None and annotations.boxes["format"] == "coco":
                    annotations._coco.boxes_of(f)
            except AnnotationError:
                missing.append(f)
        if missing:
            raise ConfigError(
                where,
                f"{len(missing)} of the {len(evaluated)} evaluated images have no annotation there: {_first(missing)}",
            )


def _first(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


# timm tags whose classifier is an ImageNet-1k head end in "in1k" (resnet50.a1_in1k,
# vit_base_patch16_224.augreg2_in21k_ft_in1k); an untagged name loads timm's default tag, which
# for an ImageNet classifier is an in1k one.
IMAGENET_CLASSES = 1000


def model_class_count(spec: dict, config: dict) -> tuple[int | None, str]:
    """How many classes a model entry outputs, as far as the config tells, and why.

    The rule: the entry's ``num_classes`` when given; a ``trained`` model has its dataset's
    classes; a timm model loading pretrained weights (no checkpoint) whose name has no tag or a
    tag ending in ``in1k``, and a torchvision model with ``IMAGENET1K_*`` or ``DEFAULT`` weights,
    have ImageNet's 1000. Otherwise (a checkpoint, another pretraining set, random
    initialisation) the count is unknown here and checked when the model is loaded.
    """
    if spec.get("num_classes") is not None:
        return int(spec["num_classes"]), "its num_classes"
    kind = spec["kind"]
    if kind == "trained":
        count, _, rule = dataset_label_space(config["datasets"][spec["dataset"]], config["datasets"])
        return count, f"trained on dataset {spec['dataset']!r} ({rule})"
    if kind == "timm" and not spec.get("checkpoint") and spec.get("pretrained", True):
        tag = spec["name"].split(".", 1)[1] if "." in spec["name"] else ""
        if not tag or tag.endswith("in1k"):
            return IMAGENET_CLASSES, f"timm {spec['name']!r} pretrained on ImageNet-1k"
    if kind == "torchvision" and not spec.get("checkpoint"):
        weights = str(spec.get("weights") or "")
        if weights == "DEFAULT" or weights.upper().startswith("IMAGENET1K"):
            return IMAGENET_CLASSES, f"torchvision weights {weights} (ImageNet-1k)"
    return None, "unknown before loading"


def dataset_label_space(spec: dict, datasets: dict) -> tuple[int | None, bool, str]:
    """(class count, exact, rule) of a dataset entry: `exact` means a model must have exactly
    that many classes; otherwise the labels are indices and a model needs more than the largest."""
    kind = spec["kind"]
    if kind == "corrupted":
        base = spec["of"] if isinstance(spec["of"], dict) else datasets[spec["of"]]
        return dataset_label_space(base, datasets)
    if kind == "synthetic_shapes":
        return int(spec.get("classes", 8)), True, "synthetic shape classes"
    if kind == "synthetic_severity":
        return 1, True, "a regression task: one output, the total severity"
    if kind == "cifar":
        return (100 if spec.get("variant") == "cifar100" else 10), True, f"{spec.get('variant', 'cifar10')} classes"
    from attrflow.data.image_folder import ImageFolderError, resolve_classes

    try:
        index = resolve_classes(spec["root"], spec.get("labels_file"), spec.get("classes"))
    except ImageFolderError:
        return None, True, "unresolved"
    return len(index.names), index.exact, index.rule


def _check_label_spaces(config: dict, workdir: Path) -> None:
    """Every selected model must be able to output every label of every dataset it runs on."""
    from attrflow.data.image_folder import WNID, class_folders

    run = config["run"]
    datasets = {
        name: {**spec, **{k: str(_resolved(workdir, spec[k])) for k in ("root", "labels_file") if spec.get(k)}}
        for name, spec in config["datasets"].items()
    }
    resolved = {**config, "datasets": datasets}
    for model in run["models"]:
        spec = config["models"][model]
        count, why = model_class_count(spec, resolved)
        if count is None:
            continue
        on = [
            d for d in run["datasets"]
            if any(
                model in config["methods"][m].get("models", [model]) and d in config["methods"][m].get("datasets", [d])
                for m in run["methods"]
            )
        ]
        if spec.get("dataset") and spec["kind"] != "trained":
            on.append(spec["dataset"])
        for dataset in dict.fromkeys(on):
            labels, exact, rule = dataset_label_space(datasets[dataset], datasets)
            if labels is None or (labels == count if exact else labels <= count):
                continue
            need = f"exactly {labels}" if exact else f"more than {labels - 1}"
            message = (
                f"model {model!r} has {count} classes ({why}) but dataset {dataset!r} needs {need} "
                f"({labels} classes: {rule})"
            )
            base = datasets[dataset]
            base = base if base["kind"] != "corrupted" else datasets[base["of"]]
            key = f"models.{model}.num_classes" if spec.get("num_classes") is not None else f"models.{model}"
            if (
                count == IMAGENET_CLASSES and base["kind"] == "image_folder" and base.get("classes") is None
                and not base.get("labels_file") and all(WNID.match(c) for c in class_folders(base["root"]))
            ):
                folder = dataset if datasets[dataset]["kind"] != "corrupted" else datasets[dataset]["of"]
                key = f"datasets.{folder}.classes"
                message += "; its sub-folders are WordNet ids: set classes: imagenet to use ImageNet's class index"
            raise ConfigError(key, message)


def _must_exist(workdir: Path, value: str, key: str, file: bool) -> None:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else workdir / path
    ok = path.is_file() if file else path.is_dir()
    if not ok:
        what = "file" if file else "directory"
        raise ConfigError(key, f"{what} {str(path)!r} does not exist")


def validate_config(config: dict, workdir: Path | None = None, schema_path: Path = SCHEMA_PATH) -> dict:
    """Return a checked copy of `config` with defaults filled in; raise ConfigError otherwise."""
    if not isinstance(config, dict):
        raise ConfigError("", "the configuration must be a mapping")
    checked = copy.deepcopy(config)
    _check(checked, load_schema(schema_path), [])
    _check_selection(checked)
    _check_corrupted_datasets(checked)
    _check_entries(checked, "methods")
    _check_entries(checked, "metrics")
    _check_requirements(checked)
    _check_peer_entries(checked)
    _check_lpi_layout(checked)
    _check_axioms(checked)
    _check_roar(checked)
    _check_dissection(checked)
    _check_paths(checked, Path(workdir) if workdir else Path.cwd())
    _check_image_folders(checked, Path(workdir) if workdir else Path.cwd())
    _check_label_spaces(checked, Path(workdir) if workdir else Path.cwd())
    return checked


def load_config(path: str | Path, workdir: Path | None = None) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("", f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{path} is not valid YAML: {err}") from None
    return validate_config(raw, workdir)
