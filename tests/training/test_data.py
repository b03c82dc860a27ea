"""Text sources: the offline prose source, mixtures by share, the document split."""

import numpy as np
import pytest

from gatekv_jax.training import data


class WordTokenizer:
    """One token per whitespace-separated word (its length), enough to cut contexts."""

    def __call__(self, text, add_special_tokens=False):
        return type("Encoded", (), {"input_ids": [len(word) for word in text.split()] or [0]})()


def test_module_prose_keeps_docstrings_and_comments_in_order_and_drops_code():
    source = ('"""Module doc."""\n'
              "# A comment that\n"
              "# spans two lines.\n"
              "x = 1  # noqa\n"
              "# y = compute(x)\n"
              "\n"
              "def f():\n"
              '    """Function doc."""\n'
              "    # Why we return here.\n"
              "    return x\n")
    assert data.module_prose(source) == ("Module doc.\n\nA comment that spans two lines.\n\nFunction doc.\n\n"
                                         "Why we return here.")
    assert data.module_prose("def broken(:\n") == ""


def test_html_text_strips_markup_and_collapses_blank_lines():
    page = "<html><body><h1>Title</h1>\n<p>Some <b>bold</b> text.</p>\n\n\n<p>Next</p></body></html>"
    assert data.html_text(page) == "Title\nSome bold text.\n\nNext"


def test_source_shares_parse_and_refuse_bad_specs():
    assert data.source_shares("stdlib") == {"stdlib": 1.0}
    assert data.source_shares("stdlib:3,prose:1") == {"stdlib": 0.75, "prose": 0.25}
    for spec, match in (("books", "unknown text source 'books'"), ("stdlib:0,prose:1", "positive share"),
                        ("stdlib:x", "positive share"), ("prose:1,prose:2", "each source once")):
        with pytest.raises(ValueError, match=match):
            data.source_shares(spec)


def test_mixed_contexts_hold_the_shares_in_every_prefix_and_stop_when_a_source_runs_out(monkeypatch):
    def fake_documents(name, paths=()):
        count = {"stdlib": 7, "prose": 2}[name]
        return ((f"{name}-{i}", " ".join(["word"] * 9)) for i in range(count))

    monkeypatch.setattr(data, "documents", fake_documents)
    monkeypatch.setattr(data, "is_heldout", lambda doc_id, fraction: False)
    contexts = list(data.mixed_contexts("stdlib:0.75,prose:0.25", [], WordTokenizer(), 10, 0.1, "train"))
    sources = [docs[0].split("-")[0] for docs, _ in contexts]
    # Each 9-word document plus a blank-line separator is one 10-token context.
    # The third prose turn finds the source empty and ends the stream.
    assert sources == ["stdlib", "stdlib", "prose", "stdlib", "stdlib", "stdlib", "prose", "stdlib", "stdlib"]
    assert all(tokens.shape == (10,) and tokens.dtype == np.int32 for _, tokens in contexts)


def test_prose_source_covers_reference_docstrings_and_idle_and_splits_with_the_code():
    kinds = {}
    for doc_id, text in data.prose_documents():
        kind = "topic" if doc_id.startswith("pydoc-topic:") else "module" if doc_id.endswith("#prose") else "idle"
        kinds.setdefault(kind, []).append(doc_id)
        assert len(text) >= 2000
    assert set(kinds) == {"topic", "module", "idle"}
    module = kinds["module"][0].partition("#")[0]
    for fraction in (0.1, 0.5):
        assert data.is_heldout(f"{module}#prose", fraction) == data.is_heldout(module, fraction)
    code_ids = {doc_id for doc_id, _ in data.stdlib_documents()}
    assert "pydoc_data/topics.py" not in code_ids  # its prose is the "prose" source's
    assert len(code_ids) > 300


def test_a_local_folder_stands_for_its_text_files_with_ids_relative_to_it(tmp_path):
    for root in ("a", "b"):  # the same corpus at two places: the same documents and ids
        (tmp_path / root / "pkg").mkdir(parents=True)
        (tmp_path / root / "pkg" / "mod.py").write_text("x = 1\n")
        (tmp_path / root / "notes.md").write_text("# notes\n")
        (tmp_path / root / "rows.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
        (tmp_path / root / "image.png").write_bytes(b"\x89PNG")
    found = [list(data.local_documents([str(tmp_path / root)])) for root in ("a", "b")]
    assert found[0] == found[1] == [("notes.md", "# notes\n"), ("pkg/mod.py", "x = 1\n"),
                                    ("rows.jsonl:1", "one"), ("rows.jsonl:3", "two")]
    single = str(tmp_path / "a" / "notes.md")
    assert list(data.local_documents([single])) == [(single, "# notes\n")]  # a file keeps its path as id
    (tmp_path / "empty").mkdir()
    for path, match in ((tmp_path / "empty", "holds no .txt/.md/.py/.jsonl files"),
                        (tmp_path / "missing", "is not a file or a folder")):
        with pytest.raises(ValueError, match=match):
            list(data.local_documents([str(path)]))
