"""The shape of the code the next engineer reads: files of one concern (none over 350 lines without the
reason written at its top, as export/export.py does)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "stdtrt"
LIMIT = 350


def test_no_module_is_over_350_lines_without_a_reason_at_its_top():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > LIMIT and f"Over {LIMIT} lines" not in doc:
            long.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
    assert not long, "split these along their concerns, or say at the top why not: " + "; ".join(long)
