"""The one exception type for problems the user can fix (bad input, missing files, options).

A message names options as the command line spells them (`--max-drop 1`); `str()` of the error
spells them as the Python API takes them (`max_drop=1`), and the CLI prints `cli_message`. Text in
backticks (a command to run) is left as written.
"""

from __future__ import annotations

import re

# Flags whose keyword in the API is not the flag's name with dashes as underscores.
API_SPELLING = {
    "eval": "evaluate",
    "no-eval": "evaluate=False",
    "lr": "learning_rate",
    "config": "configurations",
    "seq-len": "sequence_lengths",
    "provider": "providers",
    "fp32": "fp16=False",
}
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(?:[ =]([A-Z][A-Z0-9_]*|\d[\w.,]*))?")


def api_spelling(message: str) -> str:
    """`message` with each command-line option outside backticks as the API's keyword."""

    def keyword(match: re.Match) -> str:
        flag, value = match.group(1), match.group(2)
        name = API_SPELLING.get(flag) or (
            f"{flag[3:].replace('-', '_')}=False" if flag.startswith("no-") else flag.replace("-", "_")
        )
        return f"{name}={value}" if value and "=" not in name else name

    parts = message.split("`")
    return "`".join(_FLAG.sub(keyword, part) if index % 2 == 0 else part for index, part in enumerate(parts))


class QtoolError(Exception):
    """A user-facing error: its message names the problem and the fix, on one line."""

    @property
    def cli_message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return api_spelling(self.cli_message)
