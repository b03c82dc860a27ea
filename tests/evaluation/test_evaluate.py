"""The evaluation end to end on the tiny model: every task and scorer, the JSON schema, full = reference."""

import json
import os

import jax
import numpy as np
import pytest

import gatekv_jax as gk
import gatekv_jax.evaluation.runner as evaluate_module
from gatekv_jax.evaluation import TASKS, add_gap_closed, copied_share, evaluate, load_config, markdown_tables, token_f1
from gatekv_jax.evaluation.runner import standard_errors
from gatekv_jax.kv.policy import SCORERS
from gatekv_jax.models.tiny import TINY_MODEL


def eval_config(tmp_path):
    config = load_config()
    gates = str(tmp_path / "gates.safetensors")
    gk.save_gates(gk.init_gates(gk.load_model(TINY_MODEL).config), gates)
    config.update(dict(model=TINY_MODEL, gates=gates, ratios="0.5,1.0", context_length=96, continuation_length=16,
                       decode_length=200,  # decoding keeps 0.5 x ~300 tokens: above sink + decode_recent
                       recall_facts=2, needle_depths="0.5", n_samples=1, chunk_size=32, output=str(tmp_path / "out")))
    config.data.max_document_tokens = 200
    return config


def test_every_task_and_scorer_end_to_end(tmp_path):
    config = eval_config(tmp_path)
    config.tasks = ",".join(TASKS)  # the default leaves out "decode" (long on a CPU)
    results = evaluate(config)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["records"] == results["records"]
    assert set(on_disk["header"]) >= {"model", "gates", "versions", "timings", "config"}
    records = results["records"]
    assert {(r["task"], r["scorer"], r["ratio"]) for r in records} == \
        {(t, s, q) for t in TASKS for s in SCORERS for q in (0.5, 1.0)}
    for record in records:
        assert {"task", "scorer", "ratio", "level", "n_samples", "kv_fraction"} <= set(record)
        if record["ratio"] == 1.0 or record["scorer"] == "full":
            assert record["kv_fraction"] == pytest.approx(1.0)
            if record["task"] == "continuation":
                assert record["delta_nll"] == 0.0 and record["top1_agreement"] == 1.0 and record["kl"] == 0.0
            if record["task"] == "decode":
                assert record["delta_nll"] == 0.0 and record["top1_agreement"] == 1.0
            if record["task"] == "qa":
                assert record["exact_match"] == 1.0 and record["f1"] == 1.0
        else:
            assert 0.4 < record["kv_fraction"] < 0.7
        if record["task"] == "continuation":
            assert {"nll", "nll_full", "delta_nll", "kl", "top1_agreement"} <= set(record)
        if record["task"] == "decode":
            assert {"nll", "nll_full", "delta_nll", "top1_agreement"} <= set(record)
        if record["task"] in ("continuation", "decode"):
            assert 0.0 <= record["copied_8grams"] <= 1.0
        if record["task"] == "needle":
            assert 0.0 <= record["accuracy"] <= 1.0 and 0.0 < record["key_nll"] < 50.0
            assert record["delta_key_nll"] == pytest.approx(record["key_nll"] - record["key_nll_full"])
            if record["scorer"] == "full" or record["ratio"] == 1.0:
                assert record["delta_key_nll"] == 0.0
        for metric, values in record["per_sample"].items():  # the mean of each metric over the samples
            assert len(values) == record["n_samples"] and np.mean(values) == pytest.approx(record[metric])
        assert record["standard_error"] == {}  # one sample: no spread to report
    for task in TASKS:
        assert os.path.isfile(tmp_path / "out" / f"{task}.png")


def test_an_interrupted_run_resumes_and_another_config_is_refused(tmp_path, monkeypatch):
    config = eval_config(tmp_path)
    config.update(dict(tasks="recall,needle", scorers="full,gate,streaming", ratios="0.5"))
    first = evaluate(config)
    assert first["header"]["complete"] and first["header"]["resumed_records"] == 0
    path = tmp_path / "out" / "results.json"
    interrupted = json.loads(path.read_text())
    interrupted["records"] = [r for r in interrupted["records"] if (r["task"], r["scorer"]) != ("needle", "gate")]
    interrupted["header"]["timings"].update(needle_seconds=100.0, total_seconds=1000.0)  # time spent before the stop
    path.write_text(json.dumps(interrupted))
    calls = []
    original = evaluate_module._score_task
    monkeypatch.setattr(evaluate_module, "_score_task", lambda task, *a: calls.append((task, a[3].scorer))
                        or original(task, *a))
    resumed = evaluate(config)
    assert calls == [("needle", "full"), ("needle", "gate")]  # full is the reference, then the missing record
    assert resumed["records"] == first["records"] and resumed["header"]["resumed_records"] == 5
    before, after = first["header"]["timings"], resumed["header"]["timings"]
    assert after["recall_seconds"] == before["recall_seconds"]  # not rerun: its time carries over
    assert after["needle_seconds"] >= 100.0 and after["total_seconds"] >= 1000.0  # this run's time is added
    assert {r["gates_sha256"] for r in resumed["records"] if r["scorer"] == "gate"} == \
        {gk.kv.gate_files.gates_digest(gk.load_gates(config.gates))}
    other = jax.tree.map(lambda x: x + 0.5, gk.load_gates(config.gates))  # new gates in the same file
    gk.save_gates(other, config.gates)
    calls.clear()
    regated = evaluate(config)
    assert calls == [("recall", "full"), ("recall", "gate"), ("needle", "full"), ("needle", "gate")]
    assert [r for r in regated["records"] if r["scorer"] != "gate"] == \
        [r for r in first["records"] if r["scorer"] != "gate"]
    assert {r.get("token_rank") for r in regated["records"] if r["ratio"] < 1.0} >= {"either", "quantile"}
    ranked_before = json.loads(path.read_text())  # a file from before token_rank: its gate records ranked by quantile
    for record in ranked_before["records"]:
        record.pop("token_rank", None)
    path.write_text(json.dumps(ranked_before))
    calls.clear()
    assert evaluate(config)["records"] == regated["records"]
    assert calls == [("recall", "full"), ("recall", "gate"), ("needle", "full"), ("needle", "gate")]
    stale = json.loads(path.read_text())  # a record to add to those of code whose full-cache reference differs
    stale["records"] = [r for r in stale["records"] if (r["task"], r["scorer"]) != ("recall", "gate")]
    next(r for r in stale["records"] if (r["task"], r["scorer"]) == ("recall", "full"))["per_sample"]["nll"][0] += 0.01
    path.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="the full cache's recall nll is now .* its records are stale"):
        evaluate(config)
    moved = tmp_path / "moved"  # a finished results folder, moved, resumes from its new place
    moved.mkdir()
    (moved / "results.json").write_text(json.dumps(regated))
    config.output = str(moved)
    calls.clear()
    assert evaluate(config)["records"] == regated["records"] and calls == []  # complete: nothing is scored
    config.sink = 8
    with pytest.raises(ValueError, match=r"another config \(fields \['sink'\] differ\)"):
        evaluate(config)


def test_decode_records_from_before_token_level_decoding_are_scored_again(tmp_path):
    """Decode records without `decode_level` were evicted per head while decoding: resuming at level
    "token" drops them (and gate records ranked by quantiles), keeps the full cache's and tagged ones."""
    from gatekv_jax.evaluation.resume import previous_records
    from gatekv_jax.evaluation.runner import eviction_tags

    config = load_config(tasks="decode", scorers="full,gate,streaming,snapkv", ratios="0.3", output=str(tmp_path))
    measured = {"per_sample": {"nll": [2.0], "top1_agreement": [1.0], "copied_8grams": [0.0]}}
    records = [{"task": "decode", "scorer": "full", "ratio": 0.3, **measured},
               {"task": "decode", "scorer": "streaming", "ratio": 0.3, **measured},  # before both tags
               {"task": "decode", "scorer": "snapkv", "ratio": 0.3, "decode_level": "token", **measured},
               {"task": "decode", "scorer": "gate", "ratio": 0.3, "gates_sha256": "g", "decode_level": "token",
                **measured}]
    header = {"config": config.to_dict(), "timings": {}}
    (tmp_path / "results.json").write_text(json.dumps({"header": header, "records": records}))
    kept, _ = previous_records(config, str(tmp_path / "results.json"), "g", eviction_tags)
    assert sorted(scorer for _, scorer, _ in kept) == ["full", "snapkv"]
    assert kept["decode", "snapkv", 0.3] == {**records[2], "token_rank": "quantile", "window_rule": "paper"}
    assert eviction_tags(config, "decode", "gate", 0.3) == {"token_rank": "either", "window_rule": "scaled",
                                                            "decode_level": "token"}
    config.level = "head"
    assert eviction_tags(config, "decode", "gate", 0.3) == {"window_rule": "scaled", "decode_level": "head"}
    assert eviction_tags(config, "recall", "full", 1.0) == {}


def test_records_missing_a_metric_of_their_task_are_scored_again(tmp_path):
    """Needle records from before `key_nll` lack it: resuming scores them again; a token_rank set in
    the config ranks every scorer that way, and records ranked otherwise are scored again too."""
    from gatekv_jax.evaluation.resume import previous_records
    from gatekv_jax.evaluation.runner import eviction_tags

    config = load_config(tasks="needle", scorers="full,gate,snapkv", ratios="0.3", output=str(tmp_path))
    measured = {"per_sample": {"accuracy": [1.0], "key_nll": [0.5], "delta_key_nll": [0.0]}}
    records = [{"task": "needle", "scorer": "full", "ratio": 0.3, "per_sample": {"accuracy": [1.0]}},
               {"task": "needle", "scorer": "snapkv", "ratio": 0.3, **measured},
               {"task": "needle", "scorer": "gate", "ratio": 0.3, "gates_sha256": "g", "token_rank": "either",
                "window_rule": "scaled", **measured}]
    header = {"config": config.to_dict(), "timings": {}}
    (tmp_path / "results.json").write_text(json.dumps({"header": header, "records": records}))
    kept, _ = previous_records(config, str(tmp_path / "results.json"), "g", eviction_tags)
    assert sorted(scorer for _, scorer, _ in kept) == ["gate", "snapkv"]
    untagged = [records[0], records[1], {k: v for k, v in records[2].items() if k != "window_rule"}]
    (tmp_path / "results.json").write_text(json.dumps({"header": header, "records": untagged}))
    kept, _ = previous_records(config, str(tmp_path / "results.json"), "g", eviction_tags)
    assert sorted(scorer for _, scorer, _ in kept) == ["snapkv"]  # the gate's was made with the paper's window
    config.token_rank = "quantile"
    header["config"] = config.to_dict()
    (tmp_path / "results.json").write_text(json.dumps({"header": header, "records": records}))
    kept, _ = previous_records(config, str(tmp_path / "results.json"), "g", eviction_tags)
    assert sorted(scorer for _, scorer, _ in kept) == ["snapkv"]
    assert eviction_tags(config, "needle", "gate", 0.3) == {"token_rank": "quantile", "window_rule": "scaled"}


def test_needle_samples_teacher_force_the_key_after_the_question(tmp_path):
    from gatekv_jax.evaluation import needle_samples

    config = eval_config(tmp_path)
    config.needle_depths = "0.1,0.9"
    tokenizer = gk.load_tokenizer(TINY_MODEL)
    samples = needle_samples(config, tokenizer)
    assert len(samples) == 2 and samples[0].answer != samples[1].answer
    for sample in samples:
        question = sample.continuation[:len(sample.question)]
        assert np.array_equal(question, sample.question) and not sample.scored[:len(question)].any()
        assert tokenizer.decode(sample.continuation[sample.scored]) == f" {sample.answer}"
        assert f"The pass key is {sample.answer}." in tokenizer.decode(sample.context)


def test_every_builder_stops_at_the_last_heldout_context(tmp_path):
    from gatekv_jax.evaluation.tasks import SAMPLE_BUILDERS

    config = eval_config(tmp_path)
    tokenizer = gk.load_tokenizer(TINY_MODEL)
    config.n_samples = 10**6  # more than the held-out split has: every builder returns what there is
    available = len(SAMPLE_BUILDERS["recall"](config, tokenizer))
    assert 1 <= available < config.n_samples
    assert len(SAMPLE_BUILDERS["needle"](config, tokenizer)) == available  # one pass key per context here
    config.n_samples = available - 1 if available > 1 else 1
    assert len(SAMPLE_BUILDERS["needle"](config, tokenizer)) == config.n_samples


def test_token_f1():
    assert token_f1("a b c", "a b c") == 1.0
    assert token_f1("a b", "a c") == pytest.approx(0.5)
    assert token_f1("", "a") == 0.0


def test_gap_closed_is_the_share_of_the_streaming_to_full_gap():
    def record(scorer, nll, ratio=0.3, task="recall"):
        return {"task": task, "scorer": scorer, "ratio": ratio, "level": "head", "nll": nll, "nll_full": 0.5}

    records = [record("streaming", 2.5), record("gate", 1.0), record("random", 3.0), record("full", 0.5),
               record("gate", 1.0, ratio=0.5), record("streaming", 2.5, task="continuation")]
    records += [{**record("knorm", 1.5), "nll_full": 0.5 + 1e-8},  # the same samples, rounded otherwise
                {**record("snapkv", 1.5), "nll_full": 0.6}]  # other samples: no streaming to compare with
    add_gap_closed(records)
    assert [r.get("gap_closed") for r in records] == [0.0, 0.75, -0.25, 1.0, None, None, pytest.approx(0.5), None]


def test_unknown_scorer_is_named(tmp_path):
    config = eval_config(tmp_path)
    config.scorers = "full,magic"
    with pytest.raises(ValueError, match="unknown scorers \\['magic'\\]"):
        evaluate(config)


def test_markdown_tables_put_scorers_in_rows_and_ratios_in_columns():
    def record(scorer, ratio, nll):
        return {"task": "recall", "scorer": scorer, "ratio": ratio, "level": "global", "n_samples": 2, "nll": nll,
                "nll_full": 0.5, "kv_fraction": ratio}

    records = [record("full", 1.0, 0.5), record("gate", 0.3, 1.25), record("gate", 0.5, 1.0),
               record("streaming", 0.3, 2.0), record("streaming", 0.5, 1.5)]
    add_gap_closed(records)
    text = markdown_tables({"header": {"config": {"context_length": 2000}}, "records": records})
    assert "**recall: NLL of the recalled facts (full 0.500)** (2000 tokens, code, global level, 2 samples)" in text
    table = "| scorer | 0.3 | 0.5 |\n| --- | --- | --- |\n| gate | 1.250 | 1.000 |\n| streaming | 2.000 | 1.500 |"
    assert table in text
    assert "| gate | 50% | 50% |" in text and "| streaming | 0% | 0% |" in text
    pooled = [{**r, "level": "token"} for r in records]
    unpooled = [{**r, "level": "token", "ratio": 0.1} for r in records if r["scorer"] != "full"]
    text = markdown_tables({"header": {"config": {"context_length": 2000, "token_pool": 3}}, "records": pooled},
                           {"header": {"config": {"context_length": 2000}}, "records": unpooled})
    assert "(2000 tokens, code, token (pool 3) level, 2 samples)" in text  # different pooling: different tables
    assert "(2000 tokens, code, token (pool 1) level, 2 samples)" in text and "| gate | 1.250 | 1.000 |" in text


def test_tables_show_standard_errors_and_keep_domains_apart():
    def record(scorer, nll, errors):
        return {"task": "recall", "scorer": scorer, "ratio": 0.3, "level": "token", "n_samples": 3, "nll": nll,
                "nll_full": 0.5, "kv_fraction": 0.3, "per_sample": {"nll": errors},
                "standard_error": standard_errors({"nll": errors})}

    code = [record("gate", 1.0, [1.0, 2.0, 3.0])]  # std 1, so the error is 1 / sqrt(3)
    prose = [record("gate", 0.75, [0.75])]
    text = markdown_tables({"header": {"config": {"context_length": 2000, "token_pool": 3}}, "records": code},
                           {"header": {"config": {"context_length": 2000, "token_pool": 3,
                                                  "data": {"source": "prose"}}}, "records": prose})
    assert "(2000 tokens, code, token (pool 3) level, 3 samples)" in text and "| gate | 1.000 ± 0.577 |" in text
    assert "(2000 tokens, prose, token (pool 3) level, 3 samples)" in text and "| gate | 0.750 |" in text


def test_tables_name_the_settings_that_differ_where_one_table_mixes_runs():
    def results(nll, digest, window=None):
        record = {"task": "recall", "scorer": "gate", "ratio": 0.3, "level": "token", "n_samples": 1, "nll": nll,
                  "nll_full": 0.5, "kv_fraction": 0.3, "gates_sha256": digest}
        return {"header": {"config": {"context_length": 2000, "token_pool": 3, "window": window}}, "records": [record]}

    text = markdown_tables(results(0.75, "ab" * 32), results(1.25, "cd" * 32))
    assert "| gate (gates abababab) | 0.750 |" in text and "| gate (gates cdcdcdcd) | 1.250 |" in text
    text = markdown_tables(results(0.75, "ab" * 32), results(1.25, "ab" * 32, window=1024))
    assert "| gate (the paper's window) | 0.750 |" in text and "| gate (window 1024) | 1.250 |" in text
    scaled = results(1.25, "ab" * 32)
    scaled["records"][0]["window_rule"] = "scaled"  # the gate's default rule since it was tagged
    text = markdown_tables(results(0.75, "ab" * 32), scaled)
    assert "| gate (the paper's window) | 0.750 |" in text and "| gate (scaled window) | 1.250 |" in text
    one_gates = markdown_tables(results(0.75, "ab" * 32))
    assert "| gate | 0.750 |" in one_gates and "(gates" not in one_gates


def test_needle_tables_show_the_key_nll_increase_paired_with_full_and_name_other_rankings():
    def record(scorer, accuracy, key_nll, deltas):
        return {"task": "needle", "scorer": scorer, "ratio": 0.3, "level": "token", "n_samples": 2,
                "accuracy": accuracy, "key_nll": key_nll, "delta_key_nll": sum(deltas) / 2, "kv_fraction": 0.3,
                "per_sample": {"delta_key_nll": deltas}, "standard_error": standard_errors({"delta_key_nll": deltas})}

    records = [record("full", 0.5, 1.25, [0.0, 0.0]), {**record("gate", 0.5, 1.5, [0.0, 0.5]), "token_rank": "either"}]
    by_quantile = [{**record("gate", 1.0, 1.0, [-0.5, 0.0]), "token_rank": "quantile"}]  # not the gate's default
    text = markdown_tables({"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": records},
                           {"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": by_quantile})
    assert "**needle: pass-key accuracy (full 0.500)**" in text and "| gate | 0.50 |" in text
    assert "teacher-forced after the question (full NLL 1.250)**" in text and "| gate | +0.250 ± 0.250 |" in text
    assert "| gate (quantile rank) | 1.00 |" in text and "| gate (quantile rank) | -0.250 ± 0.250 |" in text
    before_key_nll = [{k: v for k, v in r.items() if k not in ("key_nll", "delta_key_nll")} for r in records]
    text = markdown_tables({"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": before_key_nll},
                           {"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": by_quantile})
    assert "teacher-forced after the question (full NLL -)**" in text  # no full record of this file has key_nll
    text = markdown_tables({"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": before_key_nll},
                           {"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": records})
    assert "teacher-forced after the question (full NLL 1.250)**" in text  # the later file's full record has it


def test_a_run_without_streaming_takes_its_gap_from_another_run_on_the_same_samples():
    def results(*scorers_and_nll, nll_full=0.5):
        records = [{"task": "recall", "scorer": scorer, "ratio": 0.3, "level": "token", "n_samples": 4, "nll": nll,
                    "nll_full": nll_full, "kv_fraction": 0.3} for scorer, nll in scorers_and_nll]
        add_gap_closed(records)
        return {"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": records}

    with_streaming = results(("full", 0.5), ("streaming", 2.5), ("gate", 1.0))
    same_samples = results(("full", 0.5), ("snapkv", 1.5))
    other_samples = results(("full", 0.6), ("knorm", 1.5), nll_full=0.6)
    text = markdown_tables(with_streaming, same_samples, other_samples)
    gap_table = text[text.index("gap closed"):]
    assert "| gate | 75% |" in gap_table and "| snapkv | 50% |" in gap_table  # (2.5 - 1.5) / (2.5 - 0.5)
    assert "knorm" not in gap_table  # other samples (another full-cache NLL): no gap from this streaming


def test_copied_share_counts_the_continuation_8grams_found_in_the_context():
    context = np.arange(20)
    assert copied_share(context, np.arange(5, 15)) == 1.0  # its 3 8-grams all occur in the context
    assert copied_share(context, np.arange(100, 110)) == 0.0
    assert copied_share(context, np.array([0, 1, 2, 3, 4, 5, 6, 7, 99, 98])) == pytest.approx(1 / 3)
    assert copied_share(context, np.arange(5)) == 0.0  # shorter than one 8-gram


def test_report_of_a_file_without_records_is_an_error(tmp_path, capsys):
    from gatekv_jax.report import main

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"header": {"config": {}}, "records": []}))
    assert main([str(path)]) == 2
    assert "holds no evaluation records" in capsys.readouterr().err


def test_continuation_per_context_table_averages_copy_contexts_apart():
    def record(scorer, deltas):
        fulls = [2.0, 1.0, 0.1]
        return {"task": "continuation", "scorer": scorer, "ratio": 0.3, "level": "token", "n_samples": 3,
                "nll": sum(f + d for f, d in zip(fulls, deltas)) / 3, "nll_full": sum(fulls) / 3,
                "delta_nll": sum(deltas) / 3, "kv_fraction": 0.3,
                "per_sample": {"nll": [f + d for f, d in zip(fulls, deltas)], "delta_nll": deltas,
                               "copied_8grams": [0.0, 0.2, 0.9]}}

    records = [record("full", [0.0, 0.0, 0.0]), record("gate", [0.03, 0.0, 0.9])]
    text = markdown_tables({"header": {"config": {"context_length": 8000, "token_pool": 3}}, "records": records})
    assert "| | ctx 1 | ctx 2 | ctx 3 | mean | mean without copy contexts (2 of 3) |" in text
    assert "| copied 8-grams | 0.00 | 0.20 | 0.90 | | |" in text
    assert "| full NLL | 2.000 | 1.000 | 0.100 | 1.033 | 1.500 |" in text
    # all three: mean +0.310 of 1.033; without the copy context: +0.015 of 1.500 = 1.0%
    assert "| gate | +0.030 | +0.000 | +0.900 | +0.310 (30.0%) | +0.015 (1.0%) |" in text
