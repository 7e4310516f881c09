"""Config-check cost of an ImageNet-val-sized folder (1000 WordNet-id folders x 50 empty files,
one XML box file per image): run from the repository root with PYTHONPATH=src."""

import os, sys, tempfile, time, copy
from pathlib import Path
import yaml
from attrflow.data.image_folder import imagenet_synsets
from attrflow.config import validate_config
root = Path(tempfile.mkdtemp(prefix="rd_bench."))
val, xml = root / "val", root / "xml"
xml.mkdir()
k = 0
for wnid in imagenet_synsets():
    (val / wnid).mkdir(parents=True)
    for _ in range(50):
        k += 1
        (val / wnid / f"ILSVRC2012_val_{k:08d}.JPEG").touch()
        (xml / f"ILSVRC2012_val_{k:08d}.xml").touch()
config = yaml.safe_load(open("config/test.yaml"))
config["datasets"]["val"] = {"kind": "image_folder", "root": str(val), "classes": "imagenet",
                             "boxes": {"format": "imagenet_xml", "root": str(xml)}}
config["models"]["r18"] = {"kind": "timm", "name": "resnet18", "dataset": "val"}
config["run"].update(datasets=["val"], models=["r18"], methods=["gradient"], metrics=["deletion"])
for label, cfg in (("with boxes", config), ("without boxes", None)):
    if cfg is None:
        cfg = copy.deepcopy(config); del cfg["datasets"]["val"]["boxes"]
    t = time.perf_counter(); validate_config(cfg, workdir=root); print(label, f"{time.perf_counter() - t:.2f} s")
os.system(f"rm -rf {root}")
