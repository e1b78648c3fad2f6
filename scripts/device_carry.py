#!/usr/bin/env python3
"""What travels to a lent GPU machine, checked here before a lease starts (scripts/device_prepare.sh runs both).

    python3 scripts/device_carry.py wheels .whl [--require NAME ...]  # each wheel installs on the device's python
    python3 scripts/device_carry.py size [--carry .whl .camvid]       # working tree + carried folders vs 64 MiB

wheels: the device's python is CPython 3.12 on manylinux x86-64 (the image's, README "GPU machines"). A wheel's
file name carries its tags (PEP 427: name-version[-build]-python-abi-platform.whl; each tag may be a
dot-separated set), and one combination must be one that python accepts: a pure wheel (py3 or py312, abi none),
a CPython 3.12 build (cp312 with abi cp312, abi3 or none), or a stable-ABI build (cp3X-abi3 with X <= 12); the
platform any, or manylinux (1, 2010, 2014 or 2_N with N <= 39) for x86_64. Each project once: two versions of one
stop the whole install. Anything else (a wheel pip built for this machine's python, a macOS or arm64 build, a
musllinux one) fails here, naming the file, instead of on the device.

size: the device tool sends the tracked files, the untracked files git does not ignore, a shared/ folder inside
the checkout, and the ignored paths named in carry: 64 MiB at most in all.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

DEVICE_MINOR = 12
"""CPython 3.<minor> on the device."""
MAX_GLIBC_MINOR = 39
LIMIT_BYTES = 64 * 2**20
"""What the device tool carries in one call: the working tree and the carried paths together."""
MANYLINUX = re.compile(r"manylinux(1|2010|2014|_2_(\d+))_x86_64")


def canonical(project: str) -> str:
    """A project name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", project).lower()


def wheel_tags(filename: str) -> tuple[str, str, list[tuple[str, str, str]]]:
    """(project, version, every (python, abi, platform) tag the file name allows)."""
    if not filename.endswith(".whl"):
        raise ValueError(f"{filename}: not a wheel (.whl)")
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        raise ValueError(f"{filename}: not a wheel file name (name-version[-build]-python-abi-platform.whl)")
    pythons, abis, platforms = (part.split(".") for part in parts[-3:])
    return parts[0], parts[1], [(p, a, pl) for p in pythons for a in abis for pl in platforms]


def platform_ok(platform: str) -> bool:
    if platform == "any":
        return True
    match = MANYLINUX.fullmatch(platform)
    return bool(match) and (match.group(2) is None or int(match.group(2)) <= MAX_GLIBC_MINOR)


def tag_ok(python: str, abi: str, platform: str, minor: int = DEVICE_MINOR) -> bool:
    """Whether CPython 3.<minor> on manylinux x86-64 installs a wheel with this tag."""
    if not platform_ok(platform):
        return False
    if abi == "none" and python in ("py3", f"py3{minor}", f"cp3{minor}"):
        return True
    if python == f"cp3{minor}" and abi in (f"cp3{minor}", "abi3"):
        return True
    stable = re.fullmatch(r"cp3(\d+)", python)
    return abi == "abi3" and bool(stable) and int(stable.group(1)) <= minor


def wheel_problems(filenames: Iterable[str], require: Sequence[str] = (), minor: int = DEVICE_MINOR) -> list[str]:
    """What keeps these wheels from installing together on the device; empty when nothing does."""
    problems, seen = [], {}
    for filename in sorted(filenames):
        try:
            project, version, tags = wheel_tags(filename)
        except ValueError as err:
            problems.append(str(err))
            continue
        if not any(tag_ok(*tag, minor=minor) for tag in tags):
            shown = ", ".join(sorted({"-".join(tag) for tag in tags}))
            problems.append(f"{filename}: tagged {shown}, not installable on CPython 3.{minor} manylinux x86-64")
        key = canonical(project)
        if key in seen:
            problems.append(f"{filename}: a second version of {project} (also {seen[key]}); keep one")
        seen[key] = filename
    problems += [f"no wheel of {name} (required)" for name in require if canonical(name) not in seen]
    return problems


def travelling_files(repo: Path) -> list[Path]:
    """The files the device tool sends without being told: tracked, and untracked but not ignored (git's view),
    plus a shared/ folder inside the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode()
    files = {repo / name for name in listed.split("\0") if name}
    if (repo / "shared").is_dir():
        files.update(folder_files(repo / "shared"))
    return sorted(path for path in files if path.is_symlink() or path.is_file())


def folder_files(folder: Path) -> list[Path]:
    if folder.is_file() or folder.is_symlink():
        return [folder]
    return [path for path in folder.rglob("*") if path.is_symlink() or path.is_file()]


def size_of(paths: Iterable[Path]) -> int:
    return sum(path.lstat().st_size for path in paths)


def mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def carried_report(repo: Path, carry: Sequence[str]) -> tuple[int, str]:
    """Total bytes that travel, and a line saying how they add up against the limit."""
    tree = travelling_files(repo)
    sizes = [("working tree", size_of(tree), f" ({len(tree)} files)")]
    for name in carry:
        path = repo / name
        if not path.exists():
            raise FileNotFoundError(f"carry {name}: {path} does not exist")
        sizes.append((name, size_of(folder_files(path)), ""))
    total = sum(size for _, size, _ in sizes)
    parts = " + ".join(f"{name} {mib(size)}{extra}" for name, size, extra in sizes)
    verdict = (f"{mib(LIMIT_BYTES - total)} to spare" if total <= LIMIT_BYTES
               else f"OVER by {mib(total - LIMIT_BYTES)}: carry less, or ignore what need not travel")
    return total, f"travels to the device: {parts} = {mib(total)} of the device tool's {mib(LIMIT_BYTES)} ({verdict})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    wheels = commands.add_parser("wheels", help="check that every wheel in a folder installs on the device")
    wheels.add_argument("folder", type=Path)
    wheels.add_argument("--require", nargs="*", default=[], help="projects that must have a wheel there")
    size = commands.add_parser("size", help="the bytes that travel with a call, against the 64 MiB limit")
    size.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    size.add_argument("--carry", nargs="*", default=[], help="ignored paths named in carry, relative to the repo")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        names = [path.name for path in sorted(args.folder.glob("*.whl"))]
        problems = wheel_problems(names, args.require) if names else [f"{args.folder} holds no wheels"]
        for problem in problems:
            print(f"device_carry: {problem}", file=sys.stderr)
        if not problems:
            print(f"device_carry: {len(names)} wheels in {args.folder}, each installable on CPython 3.{DEVICE_MINOR} "
                  "manylinux x86-64, one version per project")
        return 1 if problems else 0
    try:
        total, line = carried_report(args.repo.resolve(), args.carry)
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        print(f"device_carry: {err}", file=sys.stderr)
        return 1
    print(f"device_carry: {line}")
    return 0 if total <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
