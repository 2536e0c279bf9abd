"""Refresh the generated block of README.md between its markers; everything outside the block is left as it is."""

from __future__ import annotations

from pathlib import Path

from narvl.errors import NarvlError
from narvl.io import write_text

START = "<!-- narvl:results:start -->"
END = "<!-- narvl:results:end -->"


def replace_block(text: str, block: str, where: str = "README") -> str:
    """`text` with the lines between the markers replaced by `block`; both markers must appear once, in order."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise NarvlError(f"{where}: needs exactly one '{START}' and one '{END}' marker "
                         f"(found {text.count(START)} and {text.count(END)}); add them where the results go")
    head, rest = text.split(START)
    if END not in rest:
        raise NarvlError(f"{where}: '{END}' comes before '{START}'")
    _, tail = rest.split(END)
    return f"{head}{START}\n{block.strip()}\n{END}{tail}"


def refresh(readme: str | Path, block: str) -> bool:
    """Rewrite README (atomically) when the block changed; returns whether it changed."""
    readme = Path(readme)
    try:
        text = readme.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise NarvlError(f"{readme}: no such file") from e
    new = replace_block(text, block, str(readme))
    if new != text:
        write_text(readme, new)
    return new != text
