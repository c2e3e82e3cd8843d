"""The documentation: the README stays short, docs/configuration.md is what the settings model
generates, every setting is documented, and every relative link points at a file (and heading)
that exists inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from flowproof.core.config import Settings, env_name
from flowproof.docs_config import COMMAND, render, secret_file_names, target

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 15 * 1024

# [text](target) and ![alt](target), not inside `code`; the target up to a space or ")".
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE = re.compile(r"`[^`\n]*`")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    return LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(slug)
    return found


def test_the_readme_is_under_15_kb() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move detail into docs/"


def test_the_configuration_page_is_what_the_settings_model_generates() -> None:
    assert target() == DOCS / "configuration.md"
    current = target().read_text(encoding="utf-8") if target().is_file() else ""
    assert current == render(), (
        "docs/configuration.md is stale: regenerate it with "
        f"`{COMMAND}` (or `make docs`) after changing flowproof/config.py"
    )


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without description= in flowproof/config.py: {missing}"


def test_every_flowproof_variable_is_documented() -> None:
    docs = "\n".join(page.read_text(encoding="utf-8") for page in DOCS.glob("*.md"))
    names = [env_name(name) for name in Settings.model_fields] + secret_file_names()
    missing = [name for name in names if f"`{name}`" not in docs]
    assert not missing, f"not in docs/: {missing}"


def test_every_relative_link_points_to_an_existing_file() -> None:
    broken = []
    for page in pages():
        for link in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            inside = resolved.is_relative_to(ROOT)
            if path.startswith("/") or not inside or not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {link}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, f"broken links: {broken}"


# Where the contract used to be, outside a user's clone (spelt so that this file does not match).
OUTSIDE = ("../" + "shared", "DESIGN" + ".md")
SKIP = {".git", ".venv", ".devstack", "node_modules", "artifacts", "__pycache__"}
TEXT = {".py", ".md", ".toml", ".yaml", ".yml", ".sh", ".sql", ".cfg", ".txt", ".json"}


def repository_text_files() -> list[Path]:
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file()
        and not SKIP.intersection(path.relative_to(ROOT).parts)
        and not any(part.endswith(".egg-info") for part in path.parts)
        and (path.suffix in TEXT or path.name in ("Makefile", "Dockerfile"))
    ]


def test_nothing_in_the_repository_points_outside_it() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in repository_text_files()
        for needle in OUTSIDE
        if needle in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not found, f"references outside the repository (the contract is docs/design.md): {found}"
