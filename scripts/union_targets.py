"""Gate-training features whose targets are the elementwise max of two teacher chunkings.

    python -m gatekv_jax.train --config.workdir=A                          # teacher_chunk 2000
    python -m gatekv_jax.train --config.teacher_chunk=250 --config.workdir=B
    python scripts/union_targets.py A B C
    python -m gatekv_jax.train --config.workdir=C                          # fits on the union

A and B must hold features of the same contexts (the same config but `teacher_chunk`). C gets
A's attention inputs and manifest and, per shard, the max of A's and B's targets: a KV pair
counts as much as the more demanding of the two repeat passes says. The last command finds C's
features complete (its settings are A's) and only fits. Prints each shard's mean target.
"""

from __future__ import annotations

import argparse
import os
import shutil

import numpy as np

from gatekv_jax.training.features import read_manifest
from gatekv_jax.utils.files import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", help="workdir of the first teacher run (its settings go to the union)")
    parser.add_argument("second", help="workdir of the second teacher run, the same contexts")
    parser.add_argument("union", help="workdir to write the union features into")
    args = parser.parse_args()
    first, second, union = (os.path.join(w, "features") for w in (args.first, args.second, args.union))
    manifests = read_manifest(first), read_manifest(second)
    if manifests[0]["shards"].keys() != manifests[1]["shards"].keys() or not manifests[0]["shards"]:
        raise ValueError(f"{first} and {second} do not hold the same shards")
    os.makedirs(union, exist_ok=True)
    for name in manifests[0]["shards"]:
        inputs = [os.path.join(folder, f"{name}.inputs.npy") for folder in (first, second)]
        if not np.array_equal(np.load(inputs[0]), np.load(inputs[1])):
            raise ValueError(f"shard {name} has other attention inputs in {second}: other contexts or settings")
        targets = [np.load(os.path.join(folder, f"{name}.targets.npy")) for folder in (first, second)]
        shutil.copyfile(inputs[0], os.path.join(union, f"{name}.inputs.npy"))
        np.save(os.path.join(union, f"{name}.targets.npy"), np.maximum(*targets), allow_pickle=False)
        print(f"{name}: mean target {targets[0].mean():.4f} / {targets[1].mean():.4f} -> "
              f"{np.maximum(*targets).mean():.4f}")
    write_json(os.path.join(union, "manifest.json"), manifests[0])  # last: the manifest is the truth


if __name__ == "__main__":
    main()
