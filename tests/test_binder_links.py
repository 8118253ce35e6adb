"""scripts/binder_links.py builds the Binder launch links from a GitHub remote, and the README's
Binder links open notebooks that exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "binder_links.py"
BINDER_LINK = re.compile(r"https://mybinder\.org/v2/gh/([^)\s`]+?)\?urlpath=([^)\s`]+)")


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("binder_links", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


binder_links = _load_script()


@pytest.mark.parametrize(
    "remote",
    [
        "https://github.com/octo-org/nb-kit.git",
        "https://github.com/octo-org/nb-kit",
        "https://github.com/octo-org/nb-kit/",
        "http://github.com/octo-org/nb-kit.git",
        "https://user:secret@github.com/octo-org/nb-kit.git",
        "git@github.com:octo-org/nb-kit.git",
        "git@github.com:octo-org/nb-kit",
        "ssh://git@github.com/octo-org/nb-kit.git",
        "ssh://git@ssh.github.com:443/octo-org/nb-kit.git",
        "git://github.com/octo-org/nb-kit.git",
        "  https://github.com/octo-org/nb-kit.git\n",
    ],
)
def test_github_remotes_give_owner_and_repo(remote: str) -> None:
    assert binder_links.parse_github_remote(remote) == ("octo-org", "nb-kit")


def test_dots_in_a_repository_name_are_kept() -> None:
    assert binder_links.parse_github_remote("git@github.com:me/nbkit.io.git") == ("me", "nbkit.io")


@pytest.mark.parametrize(
    "remote",
    [
        "https://gitlab.com/octo-org/nb-kit.git",
        "git@gitlab.com:octo-org/nb-kit.git",
        "https://github.com.example.org/octo-org/nb-kit.git",
        "https://github.com/octo-org",
        "https://github.com/octo-org/nb-kit/tree/main",
        "/srv/git/nbkit.git",
        "../nbkit",
        "",
    ],
)
def test_other_remotes_are_refused(remote: str) -> None:
    assert binder_links.parse_github_remote(remote) is None


def test_launch_links() -> None:
    links = dict(binder_links.launch_links("octo-org", "nb-kit", "main"))
    assert list(links.values()) == [
        "https://mybinder.org/v2/gh/octo-org/nb-kit/main?urlpath=lab/tree/notebooks/01_quickstart.ipynb",
        "https://mybinder.org/v2/gh/octo-org/nb-kit/main?urlpath=voila/render/notebooks/dashboard.ipynb",
    ]
    # A branch with a slash is one path segment for Binder.
    (_, url), _ = binder_links.launch_links("o", "r", "feature/binder")
    assert url.startswith("https://mybinder.org/v2/gh/o/r/feature%2Fbinder?urlpath=")
    badges = binder_links.markdown_badges(binder_links.launch_links("o", "r", "main")).splitlines()
    assert len(badges) == 2 and all(line.startswith("[![") and binder_links.BADGE in line for line in badges)


def _git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


def test_script_prints_the_links_of_the_origin_remote(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q", "-b", "work/binder")
    _git(tmp_path, "remote", "add", "origin", "git@github.com:octo-org/nb-kit.git")
    result = _run_script("--repo-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (
        "https://mybinder.org/v2/gh/octo-org/nb-kit/work%2Fbinder?urlpath=lab/tree/notebooks/01_quickstart.ipynb"
        in (result.stdout)
    )
    markdown = _run_script("--repo-dir", str(tmp_path), "--branch", "main", "--markdown")
    assert markdown.returncode == 0
    assert (
        "(https://mybinder.org/v2/gh/octo-org/nb-kit/main?urlpath=voila/render/notebooks/dashboard.ipynb)"
        in (markdown.stdout)
    )


def test_script_without_a_github_remote_says_so_and_exits_2(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    result = _run_script("--repo-dir", str(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert "no GitHub remote 'origin'" in result.stderr and "there is no such remote" in result.stderr
    _git(tmp_path, "remote", "add", "origin", "https://user:secret@gitlab.com/octo-org/nb-kit.git")
    result = _run_script("--repo-dir", str(tmp_path))
    assert result.returncode == 2 and "not a GitHub repository" in result.stderr
    assert "secret" not in result.stderr  # credentials in a remote URL are never printed


@pytest.mark.parametrize("document", ["README.md", "binder/README.md"])
def test_binder_links_in_the_docs_open_notebooks_that_exist(document: str) -> None:
    links = BINDER_LINK.findall((REPO / document).read_text())
    assert links, f"{document} has no Binder link"
    urlpaths = {urlpath for _, urlpath in links}
    assert urlpaths == {urlpath for _, urlpath in binder_links.LAUNCHES}, "the docs and the script differ"
    for urlpath in urlpaths:
        prefix = next((p for p in binder_links.URLPATH_PREFIXES if urlpath.startswith(p)), None)
        assert prefix is not None, f"{urlpath}: not a JupyterLab or Voila path"
        notebook = REPO / urlpath.removeprefix(prefix)
        assert notebook.suffix == ".ipynb" and notebook.is_file(), (
            f"{document}: {urlpath} opens a missing file"
        )
