"""`make vendor`: refresh the front-end assets the docs pages and the console serve, from the npm
registry, at the versions pinned in `vendor.json`.

Nothing is loaded from another origin at run time (a locked-down server or CI has no internet), so
the files live in the repository. For each package this downloads the pinned tarball, checks it
against the registry's sha512 `integrity`, copies the listed files (flattened into `dest`) with the
package's licence, and records each file's sha256 in `vendor.json`; `--check` only compares the
committed files with those hashes (tests/unit/test_vendor.py runs it without network).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "vendor.json"
REGISTRY = "https://registry.npmjs.org"


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def target(package: dict, name: str, root: Path = ROOT) -> Path:
    return root / package["dest"] / Path(name).name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(manifest: dict, root: Path = ROOT) -> list[str]:
    """What differs between the committed files and the recorded hashes (empty when all match)."""
    problems = []
    for package in manifest["packages"]:
        recorded = package.get("sha256", {})
        for name in package["files"]:
            path = target(package, name, root)
            if not path.is_file():
                problems.append(f"{package['name']}: {path.relative_to(root)} is missing")
            elif recorded.get(Path(name).name) != sha256(path):
                problems.append(f"{package['name']}: {path.relative_to(root)} differs from vendor.json's sha256")
    return problems


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (a fixed https registry)
        return resp.read()


def refresh(package: dict, root: Path = ROOT) -> None:
    meta = json.loads(_get(f"{REGISTRY}/{package['name']}/{package['version']}"))
    tarball = _get(meta["dist"]["tarball"])
    algorithm, _, expected = meta["dist"]["integrity"].partition("-")
    if algorithm != "sha512" or base64.b64encode(hashlib.sha512(tarball).digest()).decode() != expected:
        raise SystemExit(f"{package['name']}@{package['version']}: tarball does not match the registry's integrity")
    dest = root / package["dest"]
    dest.mkdir(parents=True, exist_ok=True)
    hashes = {}
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        for name in package["files"]:
            member = tar.extractfile(f"package/{name}")
            if member is None:
                raise SystemExit(f"{package['name']}@{package['version']}: no file {name}")
            data = member.read()
            (dest / Path(name).name).write_bytes(data)
            hashes[Path(name).name] = hashlib.sha256(data).hexdigest()
    package["sha256"] = hashes
    print(f"{package['name']}@{package['version']} -> {package['dest']} ({len(hashes)} files)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed files with vendor.json")
    args = parser.parse_args(argv)
    manifest = load_manifest()
    if not args.check:
        for package in manifest["packages"]:
            refresh(package)
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    problems = check(manifest)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
