#!/usr/bin/env python3
"""Checks the documentation: every relative link in every Markdown file of the repository leads
to a file that exists (and, with #anchor, to a heading of that file, as GitHub makes its
anchors), and README.md stays the short door it is meant to be (at most README_MAX lines).

Usage: python3 .ci/docs.py              (exit 1 on any dead link or a README over its length)
       python3 .ci/docs.py --dir DIR    (only the Markdown files in DIR, as installed: the links
                                         of the docs a package ships)
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX = 250
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(path):
    """The lines outside code fences, numbered."""
    inside = False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            yield n, line


def anchors(path):
    seen = {}
    out = set()
    for _, line in prose_lines(path):
        m = re.match(r"^#{1,6} (.*)$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def markdown_files():
    files = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / f for f in files if (ROOT / f).is_file()]


def main():
    problems = []
    if sys.argv[1:2] == ["--dir"]:
        base = Path(sys.argv[2]).resolve()
        files = sorted(base.glob("*.md"))
    else:
        base = ROOT
        files = markdown_files()
    links = 0
    for path in files:
        for n, line in prose_lines(path):
            line = re.sub(r"`[^`]*`", "", line)  # inline code is no link
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, man:
                    continue
                links += 1
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(base)}:{n}"
                if not dest.exists():
                    problems.append(f"{where}: {target}: no such file")
                    continue
                if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: {target}: no heading #{anchor} in {dest.name}")
    readme = len((base / "README.md").read_text().splitlines())
    if base == ROOT and readme > README_MAX:
        problems.append(f"README.md: {readme} lines, more than {README_MAX}: move detail to docs/")
    for p in problems:
        print(p)
    print(f"docs ({base}): {len(files)} Markdown files, {links} relative links, README.md "
          f"{readme} lines: {'FAILED' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
