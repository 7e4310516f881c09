"""Load and check a configuration before any job runs.

Checks, in order, each failing with a `ConfigError` that names the key path:

1. the JSON schema (`attrflow/schemas/config.schema.yaml`, shipped inside the package): structure, types, ranges, unknown keys;
2. the selection (`run:`) names entries that exist, and models name datasets that exist;
3. each method/metric entry's `fn` is registered, and its other keys are that function's
   parameters with valid values (the schema each function registers, read by `attrflow.catalog`);
4. files the selected entries point to exist.

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

# Inside the package, so a non-editable `pip install .` validates and plans like a checkout.
SCHEMA_PATH = Path(str(resources.files("attrflow") / "schemas" / "config.schema.yaml"))
# Keys every entry may carry besides its function's parameters: how maps are stored, how many
# samples a costly entry is limited to (the first N, so results stay comparable across entries),
# which of the selected models and datasets a method runs on, and which methods a metric scores.
GENERIC_METHOD_KEYS = {"fn", "keep_channels", "samples", "models", "datasets"}
GENERIC_METRIC_KEYS = {"fn", "samples", "methods"}
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
        return {"masks", "train_split"}
    if kind == "cifar":
        return {"train_split"}
    return {"train_split"} if spec.get("train_root") else set()


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.key_path = path
        super().__init__(f"config error at '{path}': {message}" if path else f"config error: {message}")


def _key_path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


def _validator(schema: dict) -> Any:
    """A Draft 2020-12 validator that also fills `default:` values into the instance."""
    import jsonschema

    base = jsonschema.Draft202012Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    filling = jsonschema.validators.extend(base, {"properties": set_defaults})
    return filling(schema)


def _check(instance: dict, schema: dict, where: list[str]) -> None:
    import jsonschema

    errors = list(_validator(schema).iter_errors(instance))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_key_path([*where, *err.absolute_path]), err.message)


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(path.read_text())


def _params_schema(params: dict[str, dict], generic: set[str]) -> dict:
    props: dict[str, Any] = {key: True for key in generic}
    props.update(params)
    return {"type": "object", "properties": props, "additionalProperties": False}


def _check_entries(config: dict, family: str, generic: set[str]) -> None:
    registered = catalog(family)
    for entry_name, entry in config[family].items():
        fn = entry["fn"]
        if fn not in registered:
            known = ", ".join(sorted(registered)) or "(none)"
            raise ConfigError(f"{family}.{entry_name}.fn", f"unknown function {fn!r}; registered: {known}")
        _check(entry, _params_schema(registered[fn].params, generic), [family, entry_name])


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


def _check_axioms(config: dict) -> None:
    """Axiom entries must be able to run on every selected model (two classes, patches that fit)."""
    from attrflow.axioms.settings import axiom_problems

    for key, message in axiom_problems(config):
        raise ConfigError(key, message)


def _check_paths(config: dict, workdir: Path) -> None:
    run = config["run"]
    datasets = set(run["datasets"])
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
    _check_entries(checked, "methods", GENERIC_METHOD_KEYS)
    _check_entries(checked, "metrics", GENERIC_METRIC_KEYS)
    _check_requirements(checked)
    _check_lpi_layout(checked)
    _check_axioms(checked)
    _check_roar(checked)
    _check_paths(checked, Path(workdir) if workdir else Path.cwd())
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
