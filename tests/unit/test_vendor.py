"""The vendored front-end files (vendor.json, `make vendor`) are the ones recorded there, with their
licences, so nothing a page loads comes from another origin or changed by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

from tools import vendor


def test_every_vendored_file_matches_its_recorded_hash_and_has_its_licence() -> None:
    manifest = vendor.load_manifest()
    assert vendor.check(manifest) == []
    for package in manifest["packages"]:
        assert any(Path(name).name.upper().startswith("LICENSE") for name in package["files"]), package["name"]
        assert package["version"][0].isdigit(), "pinned, not a range or a tag"


def test_a_changed_or_missing_file_is_reported(tmp_path: Path) -> None:
    manifest = vendor.load_manifest()
    package = manifest["packages"][0]
    for name in package["files"]:
        copy = vendor.target(package, name, tmp_path)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(vendor.target(package, name), copy)
    only = {"packages": [package]}
    assert vendor.check(only, tmp_path) == []
    first, second = (vendor.target(package, name, tmp_path) for name in package["files"][:2])
    first.write_bytes(first.read_bytes() + b"\n")
    second.unlink()
    problems = vendor.check(only, tmp_path)
    assert len(problems) == 2 and "differs" in problems[0] and "missing" in problems[1]
