"""The repository is self-contained: nothing in the package, tests, benchmarks, scripts, CI or Makefile reads a
path outside the checkout (a fresh clone in an empty folder must pass ``make test``), and the files that used to
come from outside are in the repository with their licences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("src", "tests", "benchmarks", "scripts", ".ci", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".sh", ".toml", ".txt", ".md", ".cfg", ".ini", ".yml", ".yaml", ".json", ""}

# A path written to leave the checkout: a parent-folder step, a machine-specific absolute root, the sibling
# folder development machines had, or ``os.pardir``.
FORBIDDEN = [
    (re.compile(r"\.\./"), "a '../' path"),
    (re.compile(r"""(['"])\.\.\1"""), "a '..' path component"),
    (re.compile(r"\bos\.pardir\b"), "os.pardir"),
    (re.compile(r"/work/"), "a machine-specific /work/ path"),
    (re.compile(r"\bshared/(?:peers|data)\b"), "the development machines' shared/ folder"),
]
# Path(__file__)[.resolve()][.parent…][.parents[k]][.parent…]: how many folders up from the file's own folder
CLIMB = re.compile(
    r"__file__\)(?:\.resolve\(\)|\.absolute\(\))?((?:\.parent\b)*)(?:\.parents\[(\d+)\])?"
    r"((?:\.parent\b)*)"
)


def outside_references(rel: Path, text: str) -> list[str]:
    """Each line of ``text`` (the file at ``rel`` in the repository) that refers to a path outside the
    checkout, as 'file:line: why'. Inside the package (src/neuratlas/...) even the repository root is out of
    bounds: an installed package has no checkout around it."""
    floor = 2 if rel.parts[0] == "src" else 0  # folders that must remain above the target: src/neuratlas
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if "# escape attempt" in line:  # a test's hostile input, or the check that refuses it: not a path we read
            continue
        for pattern, why in FORBIDDEN:
            if pattern.search(line):
                found.append(f"{rel}:{n}: {why}: {line.strip()}")
        for m in CLIMB.finditer(line):
            ups = m.group(1).count(".parent") + m.group(3).count(".parent")
            k = int(m.group(2)) + 1 if m.group(2) is not None else 0
            # Path(__file__) has len(parts) parts; .parent removes one, .parents[k] removes k + 1
            steps = ups + k
            if steps and len(rel.parts) - steps < floor:
                found.append(
                    f"{rel}:{n}: climbs {steps} folders up from a file {len(rel.parts) - 1} deep: {line.strip()}"
                )
    return found


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [
            p
            for p in candidates
            if p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts and p != Path(__file__).resolve()
        ]
    return files


def test_nothing_refers_to_a_path_outside_the_repository():
    files = scanned_files()
    assert len(files) > 100 and ROOT / "Makefile" in files  # the scan really covers the tree
    found = [hit for p in files for hit in outside_references(p.relative_to(ROOT), p.read_text(errors="replace"))]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("rel", "line", "bad"),
    [
        (
            "src/neuratlas/data/text.py",
            'SHARED = Path(__file__).resolve().parents[3].parent / "shared"',  # escape attempt
            True,
        ),
        ("src/neuratlas/data/text.py", "ROOT = Path(__file__).resolve().parents[2]", True),  # src/: a checkout
        ("src/neuratlas/data/text.py", 'BUNDLED = Path(__file__).resolve().parents[1] / "bundled"', False),
        ("src/neuratlas/data/sources.py", "HERE = Path(__file__).parent.parent", False),
        ("tests/test_x.py", "ROOT = Path(__file__).resolve().parents[1]", False),
        ("tests/test_x.py", 'path = Path(__file__).resolve().parents[2] / "shared" / "peers"', True),  # escape attempt
        ("tests/test_x.py", "up = Path(__file__).parent.parent.parent", True),
        ("tests/test_x.py", 'p = Path(root) / ".." / "x"', True),
        ("scripts/setup.sh", "cp ../shared/data/x .", True),  # escape attempt
        ("Makefile", "\tcd /work/main && make", True),
        ("tests/test_x.py", 'x = "a/b/c.txt"  # and from ..pkg import y', False),
    ],
)
def test_the_check_catches_outside_paths(rel, line, bad):
    assert bool(outside_references(Path(rel), line)) == bad


def test_bundled_files_carry_their_licences():
    peers = ROOT / "src" / "neuratlas" / "bench" / "peers"
    assert "Andrej Karpathy" in (peers / "nanogpt" / "LICENSE").read_text()
    assert "3adf61e" in (peers / "README.md").read_text()
    bundled = ROOT / "src" / "neuratlas" / "data" / "bundled"
    assert "Zhilin Yang" in (bundled / "planetoid-cora" / "LICENSE").read_text()
    readme = (bundled / "README.md").read_text()
    assert all(name in readme for name in ("tinyshakespeare", "planetoid-cora"))
