"""The one table renderer of every listing, and the one cleaner of every printed name.

Tables are drawn by rich (a maintained renderer that measures wide CJK characters and cuts long
cells with an ellipsis). On a terminal a table fits the window; into a pipe or file nothing is
cut. Every cell goes through `safe_text` first: names come from the internet, and a name holding
terminal escape sequences (colours, cursor moves, a fake prompt, bidi overrides) must print as
visible text rather than act on the user's terminal.
"""

from __future__ import annotations

import io
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# C0 and C1 controls and DEL, and the Unicode bidi controls that reorder what a terminal shows.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Wide enough that nothing is cut when the output is not a terminal.
_PIPE_WIDTH = 100_000


def _escape(match: re.Match[str]) -> str:
    ch = match.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: Any) -> str:
    """`value` as printable text: control characters and escape sequences shown as `\\x1b` etc."""
    text = "" if value is None else str(value)
    return _UNSAFE.sub(_escape, text)


@dataclass
class Column:
    """One column: its header, alignment and (on a terminal) widest width before an ellipsis."""

    header: str
    justify: str = "left"  # left | right
    max_width: int | None = None
    flex: bool | None = None  # may be cut to fit a terminal (default: left-aligned columns)

    @property
    def flexible(self) -> bool:
        return self.justify == "left" if self.flex is None else self.flex


def _width() -> int:
    if sys.stdout.isatty():
        return shutil.get_terminal_size((100, 24)).columns
    return _PIPE_WIDTH


def _fit(cols: list[Column], cells: list[list[Any]], width: int) -> list[int]:
    """Column widths: each column's widest cell, then the flexible ones cut (widest first) until
    the table fits `width`; a cut cell ends in an ellipsis."""
    widths = [max([len(c.header), *(row[i].cell_len for row in cells)]) for i, c in enumerate(cols)]
    if width >= _PIPE_WIDTH:
        return widths
    widths = [min(w, c.max_width) if c.max_width else w for w, c in zip(widths, cols, strict=True)]
    floor = [max(len(c.header), 4) for c in cols]
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        cuttable = [i for i, c in enumerate(cols) if c.flexible and widths[i] > floor[i]]
        if not cuttable:
            break
        i = max(cuttable, key=lambda k: widths[k])
        widths[i] -= 1
        excess -= 1
    return widths


def render(columns: Sequence[Column | str], rows: Iterable[Sequence[Any]], *, width: int | None = None, header: bool = True) -> str:
    """The table as text (no trailing spaces); cells are cleaned by `safe_text`."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[Text(safe_text("-" if v is None or v == "" else v), no_wrap=True, overflow="ellipsis") for v in row] for row in rows]
    widths = _fit(cols, cells, width or _width())
    table = Table(box=None, show_header=header, pad_edge=False, padding=(0, 2, 0, 0), show_edge=False, header_style="")
    for c, w in zip(cols, widths, strict=True):
        table.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis", width=w)  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*row)
    buffer = io.StringIO()
    Console(file=buffer, width=sum(widths) + 2 * len(widths), color_system=None, force_terminal=False, highlight=False, emoji=False, soft_wrap=False).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
