"""Generate requirements/{runtime,training,dev}.txt from pyproject.toml (the single source of pins).

    python requirements/sync.py          # rewrite the three files
    python requirements/sync.py --check  # exit 1 if any file is out of date (run by `make lint`)

Standard library only, so it runs before the virtualenv exists.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"

# file name -> (parent file it includes with -r, pyproject group, what the group is for)
GROUPS = {
    "runtime.txt": (None, "dependencies", "what the web and worker processes import (the Docker image)"),
    "training.txt": ("runtime.txt", "training", "ml/training, ml/evaluation, ml/data benchmark builders, benchmarks"),
    "dev.txt": ("training.txt", "dev", "tests, linters, type checker, pre-commit (requirements.txt installs this)"),
}


def render() -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    out = {}
    for name, (parent, group, purpose) in GROUPS.items():
        pins = project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]
        lines = [
            f"# Generated from pyproject.toml ({group}) by requirements/sync.py; edit pyproject.toml, then",
            "# run `make requirements`.",
            f"# {purpose}",
        ]
        if parent:
            lines.append(f"-r {parent}")
        lines += pins
        out[name] = "\n".join(lines) + "\n"
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = HERE / name
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote requirements/{name}")
    if stale:
        print(
            f"requirements/{', '.join(stale)} out of date with pyproject.toml: run `make requirements`", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
