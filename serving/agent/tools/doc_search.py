"""``doc_search``: ranked term search over the text files of a mounted folder, answering with snippets.

Scores are term counts (each query term's occurrences, summed; files holding more distinct terms first).
Files are read only below the configured root: a ``folder`` argument or a symlink that leads outside is refused.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from .base import Arguments, Tool, ToolError

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".csv", ".json", ".yaml", ".yml", ".html", ".htm"})
_TERM = re.compile(r"\w+", re.UNICODE)


class DocSearchArguments(Arguments):
    query: str = Field(min_length=1, max_length=200)
    """Words to look for (case-insensitive)."""
    folder: str = Field("", max_length=256)
    """Sub-folder of the document root to search ("" = all of it)."""
    max_results: int = Field(3, ge=1, le=20)
    """Most files to answer with."""


@dataclass(frozen=True)
class Hit:
    path: str
    score: int
    distinct: int
    snippet: str


def _inside(root: Path, p: Path) -> bool:
    return p == root or p.is_relative_to(root)


def search(
    root: Path,
    query: str,
    folder: str = "",
    max_results: int = 3,
    max_file_bytes: int = 1 << 20,
    snippet_chars: int = 160,
) -> list[Hit]:
    """The ranked hits of ``query`` under ``root/folder``; raises ToolError for a folder outside the root."""
    root = root.resolve()
    base = (root / folder).resolve()
    if not _inside(root, base):
        raise ToolError(f"folder: {folder!r} is outside the document root")
    if not base.is_dir():
        raise ToolError(f"folder: {folder!r} does not exist")
    terms = sorted({t.lower() for t in _TERM.findall(query)})
    if not terms:
        raise ToolError("query: no words to search for")
    patterns = [re.compile(re.escape(t), re.IGNORECASE) for t in terms]
    hits: list[Hit] = []
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        real = path.resolve()
        if not _inside(root, real) or not real.is_file() or real.stat().st_size > max_file_bytes:
            continue  # a symlink out of the root, or too large to scan
        text = real.read_text(errors="replace")
        counts = [len(p.findall(text)) for p in patterns]
        score = sum(counts)
        if not score:
            continue
        first = min(m.start() for p in patterns if (m := p.search(text)))
        start = max(0, first - snippet_chars // 3)
        snippet = " ".join(text[start : start + snippet_chars].split())
        hits.append(Hit(str(path.relative_to(root)), score, sum(1 for c in counts if c), snippet))
    hits.sort(key=lambda h: (-h.distinct, -h.score, h.path))
    return hits[:max_results]


class DocSearch(Tool[DocSearchArguments]):
    name = "doc_search"
    description = "Search the mounted documents for words; answers with file names and snippets."
    arguments = DocSearchArguments
    timeout_s = 10.0

    def __init__(self, root: Path | None) -> None:
        self.root = root
        """Folder searched (the mounted documents); None = the tool answers that no documents are mounted."""

    async def run(self, args: DocSearchArguments) -> str:
        if self.root is None or not self.root.is_dir():
            raise ToolError("no document folder is mounted (agent.docs_root)")
        hits = await asyncio.to_thread(search, self.root, args.query, args.folder, args.max_results)
        if not hits:
            return f"no documents match {args.query!r}"
        return "\n".join(f"{h.path} (score {h.score}): {h.snippet}" for h in hits)
