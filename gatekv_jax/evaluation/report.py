"""Markdown tables of evaluation and benchmark results (what `python -m gatekv_jax.report` prints).

One table per (context length, domain, level, task, metric): rows are scorers, columns retention
ratios, cells the mean and, where the record has it, its standard error over the samples; the
records of several files with the same context length, domain and level (token pooling included)
share tables, e.g. runs of different ratios. Continuation and decode records with per-sample values
also get a per-context table, with contexts whose continuation copies the context averaged apart.
This is how the tables in docs/ are made.
"""

from __future__ import annotations

from gatekv_jax.evaluation.resume import LEGACY_TAGS
from gatekv_jax.kv.policy import default_token_rank

# (task, metric, title, format); titles may use {full}, the full cache's value
TABLES = (
    ("continuation", "delta_nll", "continuation: NLL increase over full (full NLL {full})", "{:+.3f}"),
    ("continuation", "top1_agreement", "continuation: top-1 agreement with full", "{:.3f}"),
    ("decode", "delta_nll", "decode: NLL increase over full, evicting while decoding (full NLL {full})", "{:+.3f}"),
    ("decode", "top1_agreement", "decode: top-1 agreement with full", "{:.3f}"),
    ("recall", "nll", "recall: NLL of the recalled facts (full {full})", "{:.3f}"),
    ("recall", "gap_closed", "recall: share of the streaming-to-full NLL gap closed", "{:.0%}"),
    ("needle", "accuracy", "needle: pass-key accuracy (full {full})", "{:.2f}"),
    ("needle", "delta_key_nll", "needle: NLL increase of the pass key's tokens over full, teacher-forced after "
     "the question (full NLL {full})", "{:+.3f}"),
    ("qa", "f1", "qa: token F1 against full's answer", "{:.2f}"),
)
FULL_VALUE = {"delta_nll": "nll", "nll": "nll", "accuracy": "accuracy", "delta_key_nll": "key_nll"}
DOMAINS = {"stdlib": "code", "prose": "prose"}  # evaluation data sources as tables name them
# A continuation with at least this share of its 8-grams already in the context copies it: a recall
# task on an arbitrary span, which no query-agnostic scorer can be asked to keep.
COPY_SHARE = 0.5


def _level_name(level: str, config: dict) -> str:
    """The level as tables name it: "token" carries its pooling (runs before `token_pool` had none)."""
    return f"{level} (pool {config.get('token_pool', 1)})" if level == "token" else level


def _domain(config: dict) -> str:
    source = config.get("data", {}).get("source", "stdlib")
    return DOMAINS.get(source, source)


def _scorer_name(record: dict) -> str:
    """The scorer as tables name it: with its token ranking where the record was ranked otherwise
    than the scorer's default (e.g. "gate (quantile rank)")."""
    rank = record.get("token_rank")
    return record["scorer"] if rank in (None, default_token_rank(record["scorer"])) else \
        f"{record['scorer']} ({rank} rank)"


# Settings of a run that change a scorer's evictions without changing its name: rows of one name
# that differ in them are labelled with them (`gates` is the gates' digest, from the record).
SETTING_LABELS = {"gates": "gates {}", "window": "{}", "sink": "sink {}", "chunk_size": "chunks of {}"}
WINDOW_LABELS = {"paper": "the paper's window", "scaled": "scaled window"}


def _settings(record: dict, config: dict) -> dict:
    digest = record.get("gates_sha256")
    window = config.get("window")
    rule = record.get("window_rule", LEGACY_TAGS["window_rule"])
    return {"gates": digest[:8] if digest else "unrecorded",
            "window": f"window {window}" if window else WINDOW_LABELS[rule],
            "sink": config.get("sink"), "chunk_size": config.get("chunk_size")}


def _names(rows: list[dict]):
    """`_scorer_name` for one table's rows, which also names the settings (`SETTING_LABELS`) that
    differ between rows of one name, so that no row hides or passes for another."""
    values = {}
    for r in rows:
        for key, value in r["settings"].items():
            values.setdefault((_scorer_name(r), key), set()).add(value)

    def name(record: dict) -> str:
        base = _scorer_name(record)
        differ = [SETTING_LABELS[key].format(value) for key, value in record["settings"].items()
                  if len(values[base, key]) > 1]
        return f"{base} ({', '.join(differ)})" if differ else base
    return name


def _cell(record: dict, metric: str, fmt: str) -> str:
    """`mean` or `mean ± standard error` in the table's format."""
    error = record.get("standard_error", {}).get(metric)
    value = fmt.format(record[metric])
    return value if error is None else f"{value} ± {fmt.replace('+', '').format(error)}"


def add_gap_closed(records: list[dict]) -> None:
    """For `recall` records: the share of the streaming-to-full NLL gap each scorer closes at the same
    ratio and level, `(nll_streaming - nll) / (nll_streaming - nll_full)` (1 = as good as full, 0 = as
    good as streaming, < 0 = worse); left out where streaming was not run or ties full. Streaming may
    come from another run on the same samples (the same full-cache NLL to 5 decimals), so merged files
    share it."""
    def same_samples(record):  # the full-cache NLL, to float rounding (runs on other code versions)
        return None if record.get("nll_full") is None else round(record["nll_full"], 5)

    streaming = {(r["ratio"], r["level"], same_samples(r)): r["nll"] for r in records
                 if r["task"] == "recall" and r["scorer"] == "streaming"}
    for record in records:
        key = (record["ratio"], record["level"], same_samples(record))
        if record["task"] != "recall" or key not in streaming:
            continue
        gap = streaming[key] - record["nll_full"]
        if gap > 0:
            record["gap_closed"] = (streaming[key] - record["nll"]) / gap


def _mean_with_share(deltas: list[float], fulls: list[float]) -> str:
    """The mean NLL increase and its share of the mean full-cache NLL, e.g. `+0.017 (0.7%)`."""
    if not deltas:
        return "-"
    mean = sum(deltas) / len(deltas)
    return f"{mean:+.3f} ({mean / (sum(fulls) / len(fulls)):.1%})"


def context_tables(group: list[dict], title: str) -> list[str]:
    """Per-context tables of the continuation and decode records in `group` that carry per-sample values:
    one per (task, ratio, set of samples), contexts in columns, the NLL increase of each scorer over full, its mean
    over all contexts and over the contexts that do not copy (`COPY_SHARE`)."""
    rows = [r for r in group if r["task"] in ("continuation", "decode") and r["scorer"] != "full"
            and {"delta_nll", "nll", "copied_8grams"} <= set(r.get("per_sample", {}))]
    out = []
    for task, ratio, samples in dict.fromkeys((r["task"], r["ratio"], round(r["nll_full"], 5)) for r in rows):
        same = [r for r in rows if (r["task"], r["ratio"], round(r["nll_full"], 5)) == (task, ratio, samples)]
        per_sample = same[0]["per_sample"]
        copied = per_sample["copied_8grams"]
        fulls = [nll - delta for nll, delta in zip(per_sample["nll"], per_sample["delta_nll"])]
        free = [i for i, share in enumerate(copied) if share < COPY_SHARE]
        n = len(copied)
        out.append(f"**{task} at {ratio:g} per context: NLL increase over full** ({title}; copy contexts: "
                   f"{COPY_SHARE:.0%} or more of the continuation's 8-grams occur in the context)\n")
        out.append("| | " + " | ".join(f"ctx {i + 1}" for i in range(n))
                   + f" | mean | mean without copy contexts ({len(free)} of {n}) |")
        out.append("|" + " --- |" * (n + 3))
        out.append("| copied 8-grams | " + " | ".join(f"{c:.2f}" for c in copied) + " | | |")
        out.append("| full NLL | " + " | ".join(f"{f:.3f}" for f in fulls) + f" | {sum(fulls) / n:.3f} | "
                   + (f"{sum(fulls[i] for i in free) / len(free):.3f}" if free else "-") + " |")
        name = _names(same)
        for record in same:
            deltas = record["per_sample"]["delta_nll"]
            out.append(f"| {name(record)} | " + " | ".join(f"{d:+.3f}" for d in deltas)
                       + f" | {_mean_with_share(deltas, fulls)} | "
                       + _mean_with_share([deltas[i] for i in free], [fulls[i] for i in free]) + " |")
        out.append("")
    return out


def markdown_tables(*results: dict) -> str:
    """The tables of one or more results dicts (as written to results.json)."""
    records = [{**r, "context_length": res["header"]["config"].get("context_length"),
                "domain": _domain(res["header"]["config"]), "level": _level_name(r["level"], res["header"]["config"]),
                "settings": _settings(r, res["header"]["config"])}
               for res in results for r in res["records"]]
    groups = dict.fromkeys((r["context_length"], r["domain"], r["level"]) for r in records)
    out = []
    for length, domain, level in groups:
        group = [r for r in records if (r["context_length"], r["domain"], r["level"]) == (length, domain, level)]
        add_gap_closed(group)
        for task, metric, title, fmt in TABLES:
            rows = [r for r in group if r["task"] == task and metric in r and r["scorer"] != "full"]
            if not rows:
                continue
            ratios = sorted({r["ratio"] for r in rows if r["ratio"] < 1.0})
            name = _names(rows)
            scorers = list(dict.fromkeys(map(name, rows)))
            full_key = FULL_VALUE.get(metric)  # files from before a metric existed have full records without it
            full = next((r for r in group if r["task"] == task and r["scorer"] == "full" and full_key in r), None)
            full_value = f"{full[full_key]:.3f}" if full else "-"
            samples = sorted({r["n_samples"] for r in rows})
            out.append(f"**{title.format(full=full_value)}** ({length} tokens, {domain}, {level} level, "
                       f"{'/'.join(map(str, samples))} samples)\n")
            out.append("| scorer | " + " | ".join(f"{q:g}" for q in ratios) + " |")
            out.append("| --- |" + " --- |" * len(ratios))
            for scorer in scorers:
                values = {r["ratio"]: _cell(r, metric, fmt) for r in rows if name(r) == scorer}
                cells = [values.get(q, "-") for q in ratios]
                out.append(f"| {scorer} | " + " | ".join(cells) + " |")
            out.append("")
        out += context_tables(group, f"{length} tokens, {domain}, {level} level")
    return "\n".join(out)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f}"


def _row(rows: list[dict], engine: str, policy: str, context: int) -> dict | None:
    return next((r for r in rows if r["engine"] == engine and r["policy"] == policy and r["context"] == context), None)


def bench_tables(results: dict) -> str:
    """Markdown tables of a benchmark's results dict (as written to bench.json)."""
    env, model, config = results["environment"], results["model"], results["config"]
    bandwidth = results["bandwidth_bytes_per_s"]
    peers = sorted({r["engine"] for r in results["prefill"]} - {"gatekv_jax"})
    first_peer = next((p for p in peers if p.endswith("sdpa")), peers[0] if peers else None)
    ratio = f"gate {config['ratio']:.0%}"
    cpu = f"{env['cpu_model']}, {env['cpu_vector']}, " if "cpu_model" in env else ""  # older bench files lack it
    out = [f"{model['name']} ({model['dtype']}, {model['params_bytes'] / 1e9:.2f} GB of weights) on "
           f"{env['device_kind']} ({env['platform']}, {cpu}{env.get('cpu_count')} CPUs); memory bandwidth "
           f"{bandwidth / 1e9:.1f} GB/s; tokens/s, best of {config['repeats']}", ""]
    if "matmul" in results:  # bench files from before it was measured have no matmul rates
        m, k, n = results["matmul"]["shape"]
        rates = results["matmul"]["flops_per_s"]
        line = (f"One [{m}, {k}] x [{k}, {n}] matmul (a prefill chunk's MLP): ours (XLA) "
                f"{rates['gatekv_jax'] / 1e9:.0f} GFLOP/s")
        if "transformers" in rates:
            line += (f", torch {rates['transformers'] / 1e9:.0f} GFLOP/s "
                     f"(ours / torch {rates['gatekv_jax'] / rates['transformers']:.2f}x)")
        out += [line + ".", ""]
    for title, key in (("prefill", "prefill"), ("decode (greedy, after a context of)", "decode")):
        rows = results[key]
        contexts = sorted({r["context"] for r in rows})
        header = ["context", "ours full", f"ours {ratio}"] + peers
        if first_peer:
            header.append(f"ours full / {first_peer.split('-')[-1]}")
        if key == "decode":
            header += ["bandwidth limit", "ours full / limit"]
        out += [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for context in contexts:
            full, gate = _row(rows, "gatekv_jax", "full", context), _row(rows, "gatekv_jax", "gate", context)
            cells = [f"{context:,}", f"{full['tokens_per_s']:,.1f}", f"{gate['tokens_per_s']:,.1f}"]
            cells += [f"{_row(rows, p, 'full', context)['tokens_per_s']:,.1f}" for p in peers]
            if first_peer:
                cells.append(f"{full['tokens_per_s'] / _row(rows, first_peer, 'full', context)['tokens_per_s']:.2f}x")
            if key == "decode":
                limit = bandwidth / full["bytes_per_step"]
                cells += [f"{limit:,.1f}", f"{full['tokens_per_s'] / limit:.0%}"]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    cost = results["gate_cost"]
    scale = results["scale"]
    compiles = sum(r.get("compiles_after_warmup", 0) for r in results["prefill"] + results["decode"]
                   + (scale["rows"] if scale else []))
    out += [f"Gate's own cost (every gated layer's scores, timed alone, over a decoder step on a "
            f"{cost['context']:,}-token cache): {cost['prefill_chunk']:.2%} of a {cost['chunk']}-token prefill chunk, "
            f"{cost['decode_step']:.2%} of a decode step. Compiles after warm-up: {compiles}.", ""]
    out += ["**KV cache (MiB)**", "", "| context | full | " + f"{ratio} allocated | {ratio} kept | "
            "chunked prefill peak, full | chunked prefill peak, gate |", "|" + " --- |" * 6]
    for context in sorted({r["context"] for r in results["prefill"]}):
        full, gate = _row(results["prefill"], "gatekv_jax", "full", context), \
            _row(results["prefill"], "gatekv_jax", "gate", context)
        out.append(f"| {context:,} | {_mib(full['allocated_kv_bytes'])} | {_mib(gate['allocated_kv_bytes'])} | "
                   f"{_mib(gate['kept_kv_bytes'])} | {_mib(full['prefill_peak_kv_bytes'])} | "
                   f"{_mib(gate['prefill_peak_kv_bytes'])} |")
    out += [] if scale is None else [
        "", f"**scale: {scale['model']} ({scale['params_bytes'] / 1e9:.2f} GB of weights), decode over caches "
        "filled directly**", "",
        "| cache | policy | kept tokens | decode tokens/s | GB read per step | bandwidth limit | measured / limit "
        "| gate / full | chunked prefill peak KV (MiB) |", "|" + " --- |" * 9]
    for row in scale["rows"] if scale else []:
        full = next(r for r in scale["rows"] if r["context"] == row["context"] and r["policy"] == "full")
        limit = bandwidth / row["bytes_per_step"]
        speedup = "" if row["policy"] == "full" else f"{row['tokens_per_s'] / full['tokens_per_s']:.2f}x"
        out.append(f"| {row['context']:,} | {row['policy']} | {row['kept_tokens']:,} | {row['tokens_per_s']:,.2f} | "
                   f"{row['bytes_per_step'] / 1e9:.2f} | {limit:,.2f} | {row['tokens_per_s'] / limit:.0%} | "
                   f"{speedup} | {_mib(row['prefill_peak_kv_bytes'])} |")
    out += ["", f"Peak host memory {_mib(results['peak_host_bytes'])} MiB; peak device memory "
            f"{_mib(results['peak_device_bytes'])} MiB; {results['seconds']:.0f} s in all."]
    return "\n".join(out)


def report_tables(*results: dict) -> str:
    """The tables of results dicts of either kind: benchmark results (bench.json) each on their own,
    then the evaluation results (results.json) together."""
    benches = [r for r in results if "prefill" in r]
    evaluations = [r for r in results if "prefill" not in r]
    return "\n\n".join([bench_tables(r) for r in benches] + ([markdown_tables(*evaluations)] if evaluations else []))
