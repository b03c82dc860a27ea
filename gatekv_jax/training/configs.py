"""Config files: finding them (checkout or installed package), reading them, the training recipes.

The configs live in the checkout's `configs/` folder, which the wheel installs as
`gatekv_jax/configs/`; `--config=configs/qwen3.py` (or just `qwen3`) finds them either way.
"""

from __future__ import annotations

import importlib.util
import os

from ml_collections import config_dict

from gatekv_jax.training.data import source_shares
from gatekv_jax.training.features import TARGETS

CONFIG_ARGUMENT = "--config"


def configs_folder() -> str:
    """The packaged configs: `gatekv_jax/configs` in an installed wheel, `<checkout>/configs` otherwise."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(package, "configs")
    return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package), "configs")


def resolve_config_path(value: str) -> str:
    """A config file for `value`: an existing path, or a packaged config named by its file name
    (`configs/qwen3.py`, `qwen3.py` or `qwen3`); ml_collections' `path:argument` suffix is kept."""
    path, colon, argument = value.partition(":")
    if os.path.isfile(path):
        return value
    name = os.path.basename(path)
    packaged = os.path.join(configs_folder(), name if name.endswith(".py") else f"{name}.py")
    if not os.path.isfile(packaged):
        available = sorted(f[:-3] for f in os.listdir(configs_folder()) if f.endswith(".py"))
        raise ValueError(f"config {value!r} is neither a file nor a packaged config {available}")
    return packaged + colon + argument


def with_resolved_config(argv: list[str]) -> list[str]:
    """Command-line arguments with the `--config` value resolved by `resolve_config_path`."""
    out, pending = [], False
    for arg in argv:
        if pending:
            out.append(resolve_config_path(arg))
            pending = False
        elif arg == CONFIG_ARGUMENT:
            out.append(arg)
            pending = True
        elif arg.startswith(CONFIG_ARGUMENT + "="):
            out.append(CONFIG_ARGUMENT + "=" + resolve_config_path(arg[len(CONFIG_ARGUMENT) + 1:]))
        else:
            out.append(arg)
    return out


def load_config(value: str, **overrides) -> config_dict.ConfigDict:
    """The config of a file's `get_config()` (path or packaged name) with `overrides` applied, as
    `--config.<field>=...` would."""
    path = resolve_config_path(value).partition(":")[0]
    spec = importlib.util.spec_from_file_location(f"gatekv_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(overrides)
    return config


def _parse(args: list[str], default: str, program: str) -> config_dict.ConfigDict:
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", resolve_config_path(default), "config file (configs/*.py)",
                                             flag_values=values, sys_argv=[program] + args)
    try:
        rest = values([program] + args)
    except flags.Error as e:
        raise SystemExit(f"{program}: {e}") from e
    if len(rest) > 1:
        raise SystemExit(f"{program}: unexpected arguments {rest[1:]}")
    return holder.value


def _field(config, dotted: str):
    for name in dotted.split("."):
        if not isinstance(config, config_dict.ConfigDict) or name not in config:
            return None
        config = config[name]
    return config


def parse_config_flags(argv: list[str] | None, default: str, program: str) -> config_dict.ConfigDict:
    """The config of a CLI's `--config=...` and `--config.<field>=...` arguments (default: the
    packaged config `default`), parsed into a fresh flag set so `main(argv)` works from Python.
    A list field takes comma-separated values: `--config.data.paths=a.txt,b.md`."""
    import sys

    args = with_resolved_config(list(sys.argv[1:] if argv is None else argv))
    base = _parse([a for a in args if not a.startswith(CONFIG_ARGUMENT + ".")], default, program)
    lists, others = {}, []
    for arg in args:
        name, equals, value = arg.partition("=")
        field = name[len(CONFIG_ARGUMENT) + 1:] if name.startswith(CONFIG_ARGUMENT + ".") else ""
        if field and equals and isinstance(_field(base, field), (list, tuple)):
            lists[field] = [item for item in value.split(",") if item]
        else:
            others.append(arg)
    config = _parse(others, default, program)
    for field, value in lists.items():
        parent, _, name = field.rpartition(".")
        (_field(config, parent) if parent else config)[name] = value
    return config


def training_config(model: str, workdir: str, *, dtype: str = "float32", source: str = "stdlib",
                    heldout_fraction: float = 0.1, max_document_tokens: int | None = None,
                    context_length: int = 16000, teacher_chunk: int = 2000, train_contexts: int = 64,
                    heldout_contexts: int = 2, batch_size: int = 1, tokens_per_context: int | None = None,
                    targets: str = "successor",
                    steps: int = 5000, batch_tokens: int = 1000, eval_every: int = 250, eval_tokens: int = 20000,
                    checkpoint_every: int = 250) -> config_dict.ConfigDict:
    """A `python -m gatekv_jax.train` config; fit defaults are the paper's (lr 0.2, momentum 0.9),
    the targets are successor-credited KVzip scores (`targets="kvzip"`: the paper's)."""
    c = config_dict.ConfigDict()
    c.model = model
    c.dtype = dtype
    c.workdir = workdir
    c.data = config_dict.ConfigDict(dict(
        source=source, paths=[], heldout_fraction=heldout_fraction,
        max_document_tokens=config_dict.placeholder(int) if max_document_tokens is None else max_document_tokens))
    c.context_length = context_length
    c.teacher_chunk = teacher_chunk
    c.train_contexts = train_contexts
    c.heldout_contexts = heldout_contexts
    c.batch_size = batch_size
    c.tokens_per_context = config_dict.placeholder(int) if tokens_per_context is None else tokens_per_context
    # "successor": each token's teacher score or the next token's, whichever is larger (keeps more
    # planted numbers: docs/experiments/strong_baselines.md); "kvzip": the paper's scores as they are.
    c.targets = targets
    c.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # Multi-process runs (see gatekv_jax.utils.distributed.initialize): auto=True on Cloud TPU pods,
    # or a coordinator host:port with the process count and this process's id.
    c.distributed = config_dict.ConfigDict(dict(
        auto=False, coordinator=config_dict.placeholder(str), num_processes=1, process_id=0,
        cpu_devices=config_dict.placeholder(int)))
    c.fit = config_dict.ConfigDict(dict(steps=steps, batch_tokens=batch_tokens, learning_rate=0.2, momentum=0.9,
                                        warmup_fraction=0.01, eval_every=eval_every, eval_tokens=eval_tokens,
                                        checkpoint_every=checkpoint_every, seed=0))
    c.seed = 0
    return c


def check_training_config(config: config_dict.ConfigDict) -> None:
    """Refuse a training config's bad values before any model, data or feature work."""
    for name in ("context_length", "teacher_chunk", "train_contexts", "heldout_contexts", "batch_size"):
        value = config[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    per_context = config.tokens_per_context
    if per_context is not None and (not isinstance(per_context, int) or not 1 <= per_context <= config.context_length):
        raise ValueError(f"tokens_per_context must be None or an int in [1, context_length], got {per_context!r}")
    if config.targets not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {config.targets!r}")
    if config.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {config.dtype!r}")
    data = config.data
    shares = source_shares(data.source)
    if not 0.0 < data.heldout_fraction < 1.0:
        raise ValueError(f"data.heldout_fraction must be in (0, 1), got {data.heldout_fraction!r}")
    if "local" in shares:
        missing = [path for path in data.paths if not os.path.exists(path)]
        if not data.paths or missing:
            raise ValueError(f"data.source='local' needs existing data.paths; missing: {missing or 'none given'}")


def paper_scale(model: str, workdir: str) -> config_dict.ConfigDict:
    """The paper's recipe: fineweb-edu, 16K-token contexts, 64 contexts (~1M tokens), 5,000 steps, bf16."""
    return training_config(model, workdir, dtype="bfloat16", source="fineweb-edu", heldout_fraction=0.01)
