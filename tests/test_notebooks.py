"""The notebooks, executed on CPU as committed (parameters shrunk), with assertions on their results."""

import json
import math
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 900  # seconds; the whole notebook is bounded by the sum of its cells


def committed(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def execute(name, overrides: str, workdir, summary: str) -> dict:
    """Run notebook `name` with `overrides` injected after its parameters cell, in `workdir`;
    returns the JSON of the variable `summary` printed by one appended cell."""
    notebook = committed(name)
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json\nprint('SUMMARY=' + json.dumps({summary}))"))
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    text = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    return json.loads(text.split("SUMMARY=", 1)[1])


@pytest.mark.parametrize("name", ["quickstart.ipynb", "train_gates.ipynb", "jax_pipeline.ipynb"])
def test_committed_notebooks_are_stripped_and_have_one_parameters_cell(name):
    notebook = committed(name)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in notebook.cells if cell.cell_type == "code")
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].source.startswith("# Parameters")
    assert notebook.cells[0].cell_type == "markdown" and "**Runtime.**" in notebook.cells[0].source


@pytest.mark.slow
def test_quickstart_on_cpu(tmp_path):
    results = execute("quickstart.ipynb", "SWEEP_RATIOS = [0.3, 0.6]", tmp_path, "results")
    questions = results["questions"]
    assert results["correct"]["full"] == questions  # the document and questions are fair
    assert results["correct"]["gate"] >= results["correct"]["streaming"]
    assert results["gate_right_where_full_is"] >= questions - 1  # measured: 4 (3 ranked by score: the pass key)
    slots = results["gated_slots"]  # gated layers: ceil(0.3 x tokens) per head, the protected window inside
    per_head = math.ceil(0.3 * results["document_tokens"])
    assert slots["kept"] == per_head * results["kv_heads"] * results["gated_layers"]
    assert slots["full"] == results["document_tokens"] * results["kv_heads"] * results["gated_layers"]
    memory = results["memory"]  # KV bytes: 30% of the gated layers' full cache + the sliding layers' windows
    gated_full_bytes = memory["full"]["full_bytes"] * results["gated_layers"] / results["layers"]
    sliding_bytes = memory["full"]["kept_bytes"] - gated_full_bytes
    assert memory["gate"]["kept_bytes"] <= gated_full_bytes * per_head / results["document_tokens"] + sliding_bytes
    assert memory["gate"]["kept_bytes"] < 0.301 * gated_full_bytes + sliding_bytes  # ceil adds < 1 slot per head
    sweep = results["sweep"]
    assert sweep["gate@0.6"]["nll"] <= sweep["gate@0.3"]["nll"] + 0.5
    assert sweep["gate@0.3"]["bytes"] < sweep["gate@0.6"]["bytes"] < sweep["full"]["bytes"]


@pytest.mark.slow
def test_train_gates_on_cpu(tmp_path):
    overrides = ('MODEL = "tiny-random-qwen3"\nCONTEXT_LENGTH, MAX_DOCUMENT_TOKENS = 64, 100\n'
                 'TRAIN_CONTEXTS, HELDOUT_CONTEXTS, STEPS = 8, 2, 100\nEVAL_CONTEXT, EVAL_SAMPLES = 96, 1')
    summary = execute("train_gates.ipynb", overrides, tmp_path, "summary_for_ci")
    loss = summary["heldout_loss"]
    assert all(after < before for before, after in zip(loss["untrained"], loss["trained"]))  # every gated layer
    assert summary["steps"] == 100
    assert set(summary["recall_nll"]) == {f"{s}@{r}" for s in ("full", "gate", "streaming", "snapkv")
                                          for r in (0.2, 0.3, 0.5)}
    assert all(math.isfinite(v) for v in summary["recall_nll"].values())
    assert summary["kv_fraction"]["gate@0.3"] <= 0.3 + 0.05
    assert os.path.isfile(tmp_path / "workdir" / "notebook_gates" / "gates.safetensors")


@pytest.mark.slow
def test_jax_pipeline_on_cpu(tmp_path):
    overrides = 'MODEL = "tiny-random-qwen3"\nCHUNK, BUDGET, WINDOW = 32, 48, 4'
    results = execute("jax_pipeline.ipynb", overrides, tmp_path, "results")
    assert results["devices"] == 8
    assert results["traces_after_first"] == {"prefill": 1, "decode": 1}
    assert results["traces"] == results["traces_after_first"]  # other lengths: no new compilation
    assert results["same_as_prefill"] is True
    assert results["filled"] == [min(n, results["budget"]) for n in results["lengths"]]
    assert "data" in results["cache_sharding"]  # batch rows over the data axis
