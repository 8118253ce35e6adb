"""Print the Binder launch links of this clone, built from its GitHub remote.

    python scripts/binder_links.py                 # the two links, for `origin` and the current branch
    python scripts/binder_links.py --markdown      # the README badges instead
    python scripts/binder_links.py --remote upstream --branch main

The links are ``https://mybinder.org/v2/gh/OWNER/REPO/BRANCH?urlpath=...``: JupyterLab on the
quickstart notebook and Voila on the dashboard notebook (:data:`LAUNCHES`). OWNER/REPO come
from ``git remote get-url REMOTE`` (``https://github.com/OWNER/REPO(.git)``,
``git@github.com:OWNER/REPO(.git)``, ``ssh://git@github.com/OWNER/REPO(.git)``, ...); BRANCH
is ``--branch``, else the branch checked out. Without a GitHub remote the script says so on
stderr and exits with status 2 (no link is guessed). Binder builds what is pushed: push the
branch before opening a link.

Standard library only; nothing is contacted.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

BINDER = "https://mybinder.org/v2/gh"
BADGE = "https://mybinder.org/badge_logo.svg"
# What each launch link opens: (label, Binder urlpath). The notebooks are relative to the repository root.
LAUNCHES: tuple[tuple[str, str], ...] = (
    ("JupyterLab on the quickstart", "lab/tree/notebooks/01_quickstart.ipynb"),
    ("Dashboard app (Voila)", "voila/render/notebooks/dashboard.ipynb"),
)
URLPATH_PREFIXES = ("lab/tree/", "voila/render/")
NO_REMOTE_EXIT = 2

_NAME = r"[A-Za-z0-9_.-]+"
_GITHUB_REMOTE = re.compile(
    r"^(?:"
    r"(?:https?|git|ssh|git\+ssh)://(?:[^@/]+@)?(?:www\.|ssh\.)?github\.com(?::\d+)?/"  # URL forms
    r"|[^@/:]+@github\.com:"  # the scp-like ssh form, git@github.com:OWNER/REPO
    rf")(?P<owner>{_NAME})/(?P<repo>{_NAME})/?$"
)


def parse_github_remote(url: str) -> tuple[str, str] | None:
    """``(owner, repo)`` of a GitHub remote URL, or ``None`` when ``url`` is not a GitHub repository."""
    match = _GITHUB_REMOTE.match(url.strip())
    if not match:
        return None
    owner, repo = match["owner"], match["repo"].removesuffix(".git")
    if not repo or owner in (".", "..") or repo in (".", ".."):
        return None
    return owner, repo


def binder_url(owner: str, repo: str, branch: str, urlpath: str) -> str:
    """The Binder link opening ``urlpath`` in a session built from ``owner/repo`` at ``branch``."""
    return f"{BINDER}/{owner}/{repo}/{quote(branch, safe='')}?urlpath={urlpath}"


def launch_links(owner: str, repo: str, branch: str) -> list[tuple[str, str]]:
    """``(label, url)`` of every launch link (:data:`LAUNCHES`)."""
    return [(label, binder_url(owner, repo, branch, urlpath)) for label, urlpath in LAUNCHES]


def markdown_badges(links: list[tuple[str, str]]) -> str:
    return "\n".join(f"[![{label}]({BADGE})]({url}) {label}  " for label, url in links).rstrip()


def _git(*args: str, cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:  # git itself is missing
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", default="origin", help="git remote to read (default: origin)")
    parser.add_argument("--branch", help="branch or tag Binder builds (default: the branch checked out)")
    parser.add_argument("--markdown", action="store_true", help="print README badges instead of bare links")
    parser.add_argument("--repo-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)

    url = _git("remote", "get-url", args.remote, cwd=args.repo_dir)
    parsed = parse_github_remote(url) if url else None
    if parsed is None:
        found = f"its URL is not a GitHub repository ({_redacted(url)})" if url else "there is no such remote"
        print(
            f"binder_links: no GitHub remote {args.remote!r} in {args.repo_dir}: {found}. Binder builds from "
            f"GitHub; add one (git remote add {args.remote} https://github.com/OWNER/REPO.git) or pass "
            "--remote NAME.",
            file=sys.stderr,
        )
        return NO_REMOTE_EXIT
    branch = args.branch or _git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=args.repo_dir)
    if not branch:
        print("binder_links: HEAD is detached; pass --branch NAME.", file=sys.stderr)
        return NO_REMOTE_EXIT
    links = launch_links(*parsed, branch)
    if args.markdown:
        print(markdown_badges(links))
    else:
        width = max(len(label) for label, _ in links)
        for label, link in links:
            print(f"{label:{width}}  {link}")
    return 0


def _redacted(url: str) -> str:
    """``url`` without credentials (``https://user:token@host/...`` -> ``https://***@host/...``)."""
    return re.sub(r"^([a-z+]+://)[^@/]+@", r"\1***@", url)


if __name__ == "__main__":
    sys.exit(main())
