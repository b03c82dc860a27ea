"""Text sources for gate training and evaluation, split by document, cut into token contexts.

Sources: "stdlib" (the Python code of the standard library) and "prose" (the English that ships
with Python: the language reference's topics, each module's docstrings and comments, IDLE's help
and news): both offline, always there; local files (.txt / .md / .py read whole; .jsonl with a
"text" field per line; a folder stands for every such file under it), and "fineweb-edu" (the
hub's dataset streamed through `datasets`; needs network and `pip install datasets`). A mixture
"stdlib:0.5,prose:0.5" draws contexts from each source by share; every context comes from one
source.
"""

from __future__ import annotations

import ast
import hashlib
import html.parser
import io
import json
import os
import sysconfig
import tokenize
import warnings
from typing import Iterable, Iterator

import numpy as np

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
SOURCES = ("stdlib", "prose", "local", "fineweb-edu")
# Python files of the standard library that hold prose rather than code (read by the "prose" source).
PROSE_MODULES = ("pydoc_data/topics.py",)
# Text files of the Python distribution read whole by the "prose" source (IDLE's help and news, the license).
PROSE_FILES = ("idlelib/help.html", "idlelib/NEWS.txt", "idlelib/NEWS2x.txt", "idlelib/ChangeLog",
              "idlelib/HISTORY.txt", "idlelib/README.txt", "idlelib/TODO.txt", "idlelib/extend.txt", "LICENSE.txt")


def _by_hash(ids: Iterable[str]) -> list[str]:
    """A fixed shuffled order (by a hash of each id), so any prefix of a stream mixes many documents."""
    return sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())


def _stdlib_modules() -> tuple[str, list[str]]:
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in ("site-packages", "__pycache__", "test", "tests"))
        paths.extend(os.path.relpath(os.path.join(folder, name), root) for name in files if name.endswith(".py"))
    return root, [p for p in paths if p.replace(os.sep, "/") not in PROSE_MODULES]


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def stdlib_documents(min_chars: int = 2000) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` for the Python source files of the standard library (doc_id: the path
    relative to the library), in a fixed shuffled order."""
    root, modules = _stdlib_modules()
    for module in _by_hash(modules):
        text = _read(os.path.join(root, module))
        if len(text) >= min_chars:
            yield module, text


def module_prose(source: str) -> str:
    """The docstrings and comments of Python source, in order, one paragraph each (runs of comment
    lines join into one paragraph; lines that are code are left out); "" when the source does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
        comments = [(token.start[0], token.string.lstrip("#").strip())
                    for token in tokenize.generate_tokens(io.StringIO(source).readline)
                    if token.type == tokenize.COMMENT]
    except (SyntaxError, tokenize.TokenError, ValueError):
        return ""
    pieces = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring and node.body:
                pieces.append((node.body[0].lineno, docstring))
    paragraph, start, last_line = [], 0, -1
    for line, text in comments:
        if line != last_line + 1:
            if paragraph:
                pieces.append((start, " ".join(paragraph)))
            paragraph, start = [], line
        if text and not _is_code(text):
            paragraph.append(text)
        last_line = line
    if paragraph:
        pieces.append((start, " ".join(paragraph)))
    return "\n\n".join(text for _, text in sorted(pieces, key=lambda piece: piece[0]))


def _is_code(line: str) -> bool:
    """Whether a comment line is code (commented-out statements, `noqa`, `type: ignore`, `!shebang`)."""
    if line.startswith("!"):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old sources
            ast.parse(line)
    except (SyntaxError, ValueError):
        return False
    return True


class _TextOfHtml(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(markup: str) -> str:
    """The text of an HTML page, blank lines collapsed."""
    parser = _TextOfHtml()
    parser.feed(markup)
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def prose_documents(min_chars: int = 2000) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` for the English prose that ships with Python, in a fixed shuffled order:
    each language-reference topic of `pydoc_data.topics` ("pydoc-topic:<name>"), the docstrings and
    comments of each standard-library module ("<module path>#prose": split with that module's
    code, so no held-out prose appears in training code), and IDLE's help and news files."""
    from pydoc_data.topics import topics

    root, modules = _stdlib_modules()

    def text_of(doc_id: str) -> str:
        if doc_id.startswith("pydoc-topic:"):
            return topics[doc_id.partition(":")[2]]
        if doc_id.endswith("#prose"):
            return module_prose(_read(os.path.join(root, doc_id.partition("#")[0])))
        text = _read(os.path.join(root, doc_id))
        return html_text(text) if doc_id.endswith(".html") else text

    doc_ids = [f"pydoc-topic:{name}" for name in topics] + [f"{module}#prose" for module in modules]
    doc_ids += [name for name in PROSE_FILES if os.path.isfile(os.path.join(root, name))]
    for doc_id in _by_hash(doc_ids):
        text = text_of(doc_id)
        if len(text) >= min_chars:
            yield doc_id, text


LOCAL_SUFFIXES = (".txt", ".md", ".py", ".jsonl")  # the files a folder given as a local path stands for


def _file_documents(path: str, doc_id: str) -> Iterator[tuple[str, str]]:
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f):
                if line.strip():
                    record = json.loads(line)
                    if "text" not in record:
                        raise ValueError(f"{path}:{number + 1} has no 'text' field")
                    yield f"{doc_id}:{number + 1}", record["text"]
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield doc_id, f.read()


def local_documents(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    """`(doc_id, text)` from text files, from .jsonl files with a "text" field on each line, or from
    every such file under a folder (sorted; ids relative to the folder, so the train/held-out split
    does not depend on where the folder lies)."""
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.relpath(os.path.join(root, name), path).replace(os.sep, "/")
                           for root, _, names in os.walk(path) for name in names if name.endswith(LOCAL_SUFFIXES))
            if not found:
                raise ValueError(f"text source folder {path!r} holds no {'/'.join(LOCAL_SUFFIXES)} files")
            for relative in found:  # ids with "/" on every system
                yield from _file_documents(os.path.join(path, *relative.split("/")), relative)
        elif os.path.isfile(path):
            yield from _file_documents(path, path)
        else:
            raise ValueError(f"text source {path!r} is not a file or a folder")


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
    """Documents of a named source: "stdlib", "prose", "local" (with `paths`) or "fineweb-edu"."""
    if source == "stdlib":
        return stdlib_documents()
    if source == "prose":
        return prose_documents()
    if source == "local":
        return local_documents(paths)
    if source == "fineweb-edu":
        return fineweb_documents()
    raise ValueError(f"unknown text source {source!r}; choose from {SOURCES}")


def source_shares(spec: str) -> dict[str, float]:
    """`{source: share}` of a source spec: one source ("stdlib") or a mixture ("stdlib:0.5,prose:0.5")."""
    shares = {}
    for part in str(spec).split(","):
        name, colon, share = part.strip().partition(":")
        if name not in SOURCES:
            raise ValueError(f"unknown text source {name!r} in {spec!r}; choose from {SOURCES}")
        try:
            value = float(share) if colon else 1.0
        except ValueError:
            value = float("nan")
        if not value > 0 or name in shares:
            raise ValueError(f"data source {spec!r}: each source once, with a positive share (got {part!r})")
        shares[name] = value
    total = sum(shares.values())
    return {name: value / total for name, value in shares.items()}


def is_heldout(doc_id: str, heldout_fraction: float) -> bool:
    """A stable, seedless split by document id; the part after a "#" does not count, so a
    document derived from another (a module's prose) falls in the same split."""
    digest = int(hashlib.sha256(doc_id.partition("#")[0].encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < heldout_fraction


def mixed_contexts(spec: str, paths: Iterable[str], tokenizer, length: int, heldout_fraction: float, split: str,
                   max_document_tokens: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """`token_contexts` of a source spec: each context from one source, the sources taking turns so
    that every prefix of the stream holds them by share (the one furthest below its share goes
    next). Ends when any source runs out."""
    shares = source_shares(spec)
    streams = {name: token_contexts(documents(name, paths), tokenizer, length, heldout_fraction, split,
                                    max_document_tokens) for name in shares}
    taken = dict.fromkeys(shares, 0)
    while True:
        total = sum(taken.values()) + 1
        name = max(shares, key=lambda n: (shares[n] * total - taken[n], -list(shares).index(n)))
        context = next(streams[name], None)
        if context is None:
            return
        taken[name] += 1
        yield context


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
