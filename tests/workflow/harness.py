"""Run the real workflow with Snakemake on a tiny config in a temporary copy of the repo.

The copy matters for the code-change test: it edits a method module and must not touch the
checkout. Jobs import `attrflow` from the copy too (PYTHONPATH), so what runs is what was edited.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_PARTS = ["Snakefile", "rules", "workflow_scripts", "src", "profiles", "envs"]

TINY_CONFIG = yaml.safe_load((REPO / "config" / "test.yaml").read_text())


@dataclass
class Workflow:
    root: Path  # the copy of the repository's workflow
    workdir: Path  # where results/, logs/ and .snakemake/ live

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(self.root / "src")
        env["HF_HUB_OFFLINE"] = "1"
        return env

    def command(self, *args: str, config: Path | None = None) -> list[str]:
        return [
            str(Path(sys.executable).parent / "snakemake"),
            "-s", str(self.root / "Snakefile"),
            "-d", str(self.workdir),
            "--configfile", str(config or self.workdir / "config.yaml"),
            "--profile", str(self.root / "profiles" / "workstation"),  # as `make run`
            "--cores", "2",
            "--rerun-incomplete",
            *args,
        ]

    def snakemake(self, *args: str, config: Path | None = None, check: bool = True, timeout: int = 600):
        proc = subprocess.run(
            self.command(*args, config=config), env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    def write_config(self, config: dict, name: str = "config.yaml") -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def planned(self, config: Path | None = None) -> list[tuple[str, dict[str, str]]]:
        """(rule, wildcards) of every job a dry run would execute."""
        out = self.snakemake("-n", config=config).stdout
        jobs = []
        for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
            head = re.match(r"(?:local)?rule (\w+):", block.strip())
            if not head or head.group(1) == "all":  # the target rule runs whenever anything does
                continue
            wc = re.search(r"wildcards: (.*)", block)
            wildcards = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
            jobs.append((head.group(1), wildcards))
        return jobs


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / part)
    return dest
