"""Started by test_multihost.py through launch/local.sh: prefill + generate over a 2-process mesh.

Process 0 saves the tokens and the gathered caches to `--out=<file>.npz`.
"""

import sys


def main(argv: list[str]) -> None:
    options = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--"))
    from gatekv_jax.utils.distributed import initialize

    initialize(coordinator=options["config.distributed.coordinator"],
               num_processes=int(options["config.distributed.num_processes"]),
               process_id=int(options["config.distributed.process_id"]),
               cpu_devices=int(options["config.distributed.cpu_devices"]))
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    import gatekv_jax as gk
    from tests.engine.test_multihost import engine_run

    mesh = gk.make_mesh(data=2, fsdp=2, tensor=2)
    tokens, context = engine_run(gk.load_model("tiny-random-qwen3", mesh=mesh))
    def gathered(leaf):  # a global array split over processes is gathered; a local one is read as it is
        local = leaf.is_fully_addressable or leaf.is_fully_replicated
        return np.asarray(leaf if local else multihost_utils.process_allgather(leaf, tiled=True))

    leaves = {f"leaf_{i}": gathered(leaf) for i, leaf in enumerate(jax.tree.leaves(context))}
    shardings = {str(layer.keys.sharding.spec) for layer in context.cache.layers}
    if jax.process_index() == 0:
        np.savez(options["out"], tokens=np.array(tokens), shardings=np.array(sorted(shardings)), **leaves)


if __name__ == "__main__":
    main(sys.argv[1:])
