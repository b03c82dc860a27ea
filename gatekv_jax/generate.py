"""`python -m gatekv_jax.generate`: generate text under an eviction policy and report KV memory.

    python -m gatekv_jax.generate --model=gemma3-270m --prompt="..." --scorer=streaming --ratio=0.3
    python -m gatekv_jax.generate --context_file=doc.txt --prompt="Question: ..." --scorer=gate --gates=g.safetensors

With --context_file the document is compressed first (query-agnostic), then the prompt is
appended and answered; otherwise the prompt itself is compressed.
"""

from __future__ import annotations

import argparse
import os
import sys

from gatekv_jax.engine.decode import generate
from gatekv_jax.engine.prefill import prefill
from gatekv_jax.kv.gate_files import PRETRAINED, load_gates, pretrained_gates
from gatekv_jax.kv.policy import LEVELS, SCORERS, TOKEN_RANKS, WINDOW_RULES, EvictionPolicy
from gatekv_jax.models.loading import load_model, load_tokenizer

DEFAULTS = EvictionPolicy(scorer="full")  # the library's field defaults are the CLI's


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gatekv_jax.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma3-270m", help="HF folder, hub id, .gguf file or gemma3-270m")
    p.add_argument("--prompt", help="prompt text")
    p.add_argument("--prompt_file", help="read the prompt from this file")
    p.add_argument("--context_file", help="a document to compress before the prompt is seen")
    p.add_argument("--scorer", default="gate", choices=SCORERS)
    p.add_argument("--ratio", type=float)
    p.add_argument("--budget", type=int)
    p.add_argument("--window", type=int, help="recent context tokens never evicted (default: by --window_rule)")
    p.add_argument("--window_rule", choices=WINDOW_RULES,
                   help="how the recent window is sized (default: scaled for the gate, paper otherwise)")
    p.add_argument("--sink", type=int, default=DEFAULTS.sink)
    p.add_argument("--chunk_size", type=int, default=DEFAULTS.chunk_size)
    p.add_argument("--level", default=DEFAULTS.level, choices=LEVELS,
                   help=f"how the budget is spread over gated layers and heads (default {DEFAULTS.level})")
    p.add_argument("--token_pool", type=int, default=DEFAULTS.token_pool,
                   help="neighbouring slots pooled at --level=token (odd)")
    p.add_argument("--token_rank", choices=TOKEN_RANKS,
                   help="how --level=token compares layers (default: either for the gate, quantile otherwise)")
    p.add_argument("--decode_budget", type=int)
    p.add_argument("--gates", help="gates file (safetensors) for --scorer=gate (default: the packaged gates)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the generate CLI on `argv` (default: the command line); returns the exit code."""
    args = _parser().parse_args(argv)
    if (args.prompt is None) == (args.prompt_file is None):
        raise SystemExit("error: give exactly one of --prompt and --prompt_file")
    for flag in ("prompt_file", "context_file", "gates"):  # checked before the model loads
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"error: --{flag}={path} is not a file")
    if args.scorer == "gate" and not args.gates and args.model not in PRETRAINED:
        raise SystemExit(f"error: --scorer=gate needs --gates (no packaged gates for {args.model!r})")
    prompt = args.prompt if args.prompt is not None else open(args.prompt_file).read()
    ratio = 0.3 if args.scorer != "full" and args.budget is None and args.ratio is None else args.ratio
    try:
        policy = EvictionPolicy(scorer=args.scorer, ratio=None if args.scorer == "full" else ratio,
                                budget=None if args.scorer == "full" else args.budget, window=args.window,
                                window_rule=args.window_rule, sink=args.sink, chunk_size=args.chunk_size,
                                level=args.level, token_pool=args.token_pool, token_rank=args.token_rank,
                                decode_budget=args.decode_budget, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    gates = None
    if args.scorer == "gate":
        gates = load_gates(args.gates) if args.gates else pretrained_gates(args.model)
    model = load_model(args.model, dtype=args.dtype)
    tokenizer = load_tokenizer(args.model)
    prompt_ids = tokenizer(prompt).input_ids
    if args.context_file:
        context_ids = tokenizer(open(args.context_file).read()).input_ids
        context = prefill(model, [context_ids], policy, gates=gates)
        prompt_ids = [tokenizer(prompt, add_special_tokens=False).input_ids]
    else:
        context = prefill(model, [prompt_ids], policy, gates=gates)
        prompt_ids = None
    report = context.memory_report()
    out = generate(model, prompt_ids, policy, gates=gates, context=context, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(tokenizer.decode(out[0]))
    mib = 1024 * 1024
    print(f"\n[KV after prefill] kept {report['kept_slots']} of {report['full_slots']} slots "
          f"({100 * report['kept_slots'] / report['full_slots']:.1f}%): {report['kept_bytes'] / mib:.2f} MiB kept, "
          f"{report['allocated_bytes'] / mib:.2f} MiB allocated, {report['full_bytes'] / mib:.2f} MiB for a full cache",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
