"""docs/configuration.md, generated from the settings model so that one source holds every setting.

`python -m flowproof.docs_config > docs/configuration.md` (or `make docs`) writes it: the text
below, then one row per field of `flowproof.core.config.Settings` (its variable, its default, its
`description=`). tests/test_docs.py fails when the file differs from what this prints. To change
what a setting's row says, change the field's description in flowproof/core/config.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from flowproof.core.config import FILE_SUFFIX, SECRET_FIELDS, Settings, env_name

COMMAND = "python -m flowproof.docs_config > docs/configuration.md"

INTRO = f"""\
# Configuration

<!-- Generated from flowproof/core/config.py by `{COMMAND}` (or `make docs`); do not edit by
hand. -->

Environment variables with the prefix `FLOWPROOF_`, or a TOML file given by `--config` (the
environment wins over the file; keys are the setting names in lower case). Any setting may instead
be given as `FLOWPROOF_<NAME>_FILE`, a path whose contents are the value (Docker secrets; a
trailing newline is ignored; setting both a variable and its `_FILE` is refused). Give the secrets
that way: {{secrets}}.

| variable | default | meaning |
|---|---|---|
"""

OUTRO = """
A wrong value exits 2 naming the variable (numbers must be finite, integers fit in 64 bits and
durations stay below 1e15 s). An unknown `FLOWPROOF_*` variable exits 2 naming the
closest known one (`FLOWPROOF_DATABASE_URI is not a flowproof setting; did you mean
FLOWPROOF_DATABASE_URL?`): a misspelt variable silently ignored is the drift flowproof exists to
catch. Secrets (DSN and URL passwords, the SASL and schema registry passwords) are redacted from
every log line and error message. Logs are structlog events on stderr; stdout is kept for command
output.

The local services of `make stack-up` write their settings to `.devstack/env` (see
[Operations](operations.md#local-services-devstack)); hardening (TLS, users, secrets) is in
[Security](security.md).
"""


def format_default(value: Any) -> str:
    """A default as the table shows it: the value as one would type it, or `none`."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, tuple):
        value = ",".join(str(item) for item in value)
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def secret_file_names() -> list[str]:
    """The `_FILE` variables of the settings that hold secrets, in the model's order."""
    return [env_name(name) + FILE_SUFFIX for name in Settings.model_fields if name in SECRET_FIELDS]


def render() -> str:
    """The whole of docs/configuration.md."""
    secrets = ", ".join(f"`{name}`" for name in secret_file_names())
    rows = []
    for name, field in Settings.model_fields.items():
        meaning = field.description or ""
        if name in SECRET_FIELDS:
            meaning += f"; a secret: prefer `{env_name(name)}{FILE_SUFFIX}`"
        rows.append(
            f"| `{env_name(name)}` | {format_default(field.default)} | {_cell(meaning)} |\n"
        )
    return INTRO.replace("{secrets}", secrets) + "".join(rows) + OUTRO


def main() -> None:
    sys.stdout.write(render())


def target() -> Path:
    """Where the generated page lives in a checkout."""
    return Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


if __name__ == "__main__":
    main()
