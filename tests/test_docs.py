"""The README is a short guide: every docs page it links exists, every docs page is linked, and the
file paths the docs name exist (so a move of a module shows up as a failing test, not a dead link)."""
import re

from utils.common.config import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
README_LINE_LIMIT = 300


def readme_doc_links():
    return set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README.read_text()))


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_LINE_LIMIT, f"README.md has {lines} lines (a guide keeps <= {README_LINE_LIMIT})"


def test_every_readme_link_resolves():
    links = readme_doc_links()
    assert links, "the README links no docs page"
    missing = sorted(link for link in links if not (REPO_ROOT / link).is_file())
    assert not missing, f"README links to missing pages: {missing}"


def test_every_docs_page_is_linked_from_the_readme():
    pages = {f"docs/{path.name}" for path in DOCS.glob("*.md")}
    unlinked = sorted(pages - readme_doc_links())
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_paths_named_in_the_docs_exist():
    """Every `utils/...py`, `tools/...py`, `losses/...py` or `backbones/...py` a page names is a real file."""
    named = set()
    for page in [README, *DOCS.glob("*.md")]:
        named.update((page.name, path) for path in
                     re.findall(r"\b((?:utils|tools|losses|backbones)/[\w/]+\.py)\b", page.read_text()))
    missing = sorted(f"{page}: {path}" for page, path in named if not (REPO_ROOT / path).is_file())
    assert not missing, "docs name files that do not exist:\n" + "\n".join(missing)
