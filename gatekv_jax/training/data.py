"""Text sources for gate training and evaluation, split by document, cut into token contexts.

Sources: "stdlib" (Python's own standard library sources: offline, always there), local files
(.txt / .md / .py read whole; .jsonl with a "text" field per line), and "fineweb-edu" (the hub's
dataset streamed through `datasets`; needs network and `pip install datasets`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from typing import Iterable, Iterator

import numpy as np

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"


def stdlib_documents(min_chars: int = 2000) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` for the Python source files of the standard library, in a fixed shuffled
    order (by a hash of the path), so any prefix of the stream mixes many modules."""
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("site-packages", "__pycache__", "test", "tests"))
        paths.extend(os.path.join(folder, name) for name in files if name.endswith(".py"))
    for path in sorted(paths, key=lambda p: hashlib.sha256(os.path.relpath(p, root).encode()).hexdigest()):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if len(text) >= min_chars:
            yield os.path.relpath(path, root), text


def local_documents(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` from text files, or from .jsonl files with a "text" field on each line."""
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"text source {path!r} is not a file")
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f):
                    if line.strip():
                        record = json.loads(line)
                        if "text" not in record:
                            raise ValueError(f"{path}:{number + 1} has no 'text' field")
                        yield f"{path}:{number + 1}", record["text"]
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield path, f.read()


def fineweb_documents(min_chars: int = 40_000, max_chars: int = 150_000,
                      name: str = "sample-10BT") -> Iterator[tuple[str, str]]:
    """fineweb-edu documents of about 10K-30K tokens (the paper's filter), streamed from the hub."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("the fineweb-edu source needs `pip install datasets` and network access") from e
    for record in datasets.load_dataset(FINEWEB_EDU, name=name, split="train", streaming=True):
        if min_chars <= len(record["text"]) <= max_chars:
            yield record["id"], record["text"]


def documents(source: str, paths: Iterable[str] = ()) -> Iterator[tuple[str, str]]:
    """Documents of a named source: "stdlib", "local" (with `paths`) or "fineweb-edu"."""
    if source == "stdlib":
        return stdlib_documents()
    if source == "local":
        return local_documents(paths)
    if source == "fineweb-edu":
        return fineweb_documents()
    raise ValueError(f"unknown text source {source!r}; choose stdlib, local or fineweb-edu")


def is_heldout(doc_id: str, heldout_fraction: float) -> bool:
    """A stable, seedless split by document id."""
    digest = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < heldout_fraction


def token_contexts(docs: Iterable[tuple[str, str]], tokenizer, length: int, heldout_fraction: float,
                   split: str, max_document_tokens: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """Contexts of exactly `length` tokens from the documents of one split ("train" / "heldout").

    Documents are tokenised, cut to their first `max_document_tokens` tokens (None: whole), and
    concatenated (separated by a blank line) in order; each context lists the ids of the
    documents it draws from. Train and held-out never share a document.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    buffer: list[int] = []
    sources: list[str] = []
    separator = tokenizer("\n\n", add_special_tokens=False).input_ids
    for doc_id, text in docs:
        if is_heldout(doc_id, heldout_fraction) != (split == "heldout"):
            continue
        ids = tokenizer(text, add_special_tokens=False).input_ids
        buffer.extend(ids[:max_document_tokens] + separator)
        sources.append(doc_id)
        while len(buffer) >= length:
            yield list(sources), np.asarray(buffer[:length], np.int32)
            buffer = buffer[length:]
            sources = [doc_id] if buffer else []
