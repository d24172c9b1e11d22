"""Publishing to the Comfy Registry: what `comfy node publish` reads, packs and checks.

The registry's own client (comfy-cli, a test dependency) parses pyproject.toml, builds the archive
from the files git tracks minus .comfyignore, and runs ruff's security rules on it; the registry
serves that archive to ComfyUI Manager and `comfy node install`. These tests call the same
functions on a copy of this working tree, then load the unpacked archive with ComfyUI's own
custom-node loader, as an installed pack is loaded.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.comfy_host import comfyui_path
from tools.comfy_server import copy_tracked_files

REPO = Path(__file__).resolve().parents[1]
# What users run: the package, its metadata and licence, help pages and example workflows.
SHIPPED = {"__init__.py", "pyproject.toml", "LICENSE", "README.md", "requirements.txt", "requirements-faceid.txt", "requirements-train.txt",
           "ipadapter_core", "nodes", "web", "workflows"}
# What stays in the repository: development tools, whose subprocess calls the registry's scanner flags.
NOT_SHIPPED = {".ci", ".comfyignore", ".gitignore", "Makefile", "benchmarks", "docs", "requirements-dev.txt", "scripts", "tests", "tools"}
# The rules `comfy node publish` runs (exec, eval, several statements on a line), and the ones
# for starting processes and shell commands.
SECURITY_RULES = "S102,S307,E702,S404,S602,S603,S604,S605,S606,S607"


def registry_config(path: Path, capsys) -> tuple[object, str]:
    """comfy-cli's reading of pyproject.toml and what it printed (its warnings go to stdout)."""
    from comfy_cli.registry.config_parser import extract_node_configuration

    capsys.readouterr()
    config = extract_node_configuration(str(path))
    return config, capsys.readouterr().out


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """node.zip as `comfy node publish` builds it from a clone holding this working tree's files."""
    from comfy_cli.file_utils import zip_files
    from comfy_cli.registry.config_parser import extract_node_configuration

    clone = tmp_path_factory.mktemp("clone")
    copy_tracked_files(REPO, clone)
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *command], cwd=clone, check=True, capture_output=True)
    target = tmp_path_factory.mktemp("archive") / "node.zip"
    config = extract_node_configuration(str(clone / "pyproject.toml"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(clone)  # zip_files packs the current directory, as the command does
        zip_files(str(target), includes=config.tool_comfy.includes)
    return target


@pytest.fixture(scope="module")
def unpacked(archive, tmp_path_factory) -> Path:
    """The archive unpacked into a custom_nodes folder, as the registry's installers do."""
    folder = tmp_path_factory.mktemp("custom_nodes") / "comfyui-ipadapter"
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(folder)
    return folder


def test_the_registry_reads_every_field_without_a_warning(capsys):
    config, printed = registry_config(REPO / "pyproject.toml", capsys)
    assert printed == "", printed
    project, comfy = config.project, config.tool_comfy
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", project.name) and len(project.name) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project.version) and project.description
    assert project.license.file == "LICENSE"
    licence = (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert project.urls.repository.startswith("https://github.com/")
    assert comfy.publisher_id and comfy.display_name
    assert project.supported_os == ["OS Independent"]
    assert project.supported_comfyui_version == ">=0.3.75"


def test_publication_values_agree():
    """The one value decided at publication (the repository address) fixes the icon's address too."""
    import tomllib

    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())
    owner_and_name = metadata["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    icon = metadata["tool"]["comfy"]["Icon"]
    assert icon == f"https://raw.githubusercontent.com/{owner_and_name}/main/docs/icon.svg"
    assert (REPO / "docs" / "icon.svg").read_text().startswith("<svg")


def test_the_tested_host_meets_requires_comfyui():
    """requires-comfyui claims no older ComfyUI than the one the tests run in."""
    import tomllib

    bound = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["comfy"]["requires-comfyui"].removeprefix(">=")
    version = re.search(r'__version__ = "([^"]+)"', (comfyui_path() / "comfyui_version.py").read_text()).group(1)
    assert tuple(map(int, version.split("."))) >= tuple(map(int, bound.split(".")))


def test_the_host_reads_the_pyproject(pack):
    """ComfyUI parses each pack's pyproject.toml at load time (and logs a warning when it cannot)."""
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(REPO))
    assert config.project.name == "comfyui-ipadapter" and config.tool_comfy.display_name == "IP-Adapter (reference-exact)"


def test_the_archive_holds_what_users_run_and_nothing_else(archive):
    names = zipfile.ZipFile(archive).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == SHIPPED, f"unexpected: {tops - SHIPPED}, missing: {SHIPPED - tops}"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    assert {name.split("/")[0] for name in listed} <= SHIPPED | NOT_SHIPPED, "a new top-level entry: add it to SHIPPED or NOT_SHIPPED"
    expected = {name for name in listed if name.split("/")[0] in SHIPPED and (REPO / name).is_file()}
    assert sorted(names) == sorted(expected)
    assert {f"web/docs/{path.name}" for path in (REPO / "web" / "docs").glob("*.md")} <= set(names)


def test_the_archive_passes_the_registry_security_rules(unpacked):
    def findings(folder: Path) -> str:
        command = [sys.executable, "-m", "ruff", "check", ".", "-q", "--isolated", "--no-cache", "--select", SECURITY_RULES, "--exit-zero"]
        return subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True).stdout

    assert findings(unpacked) == ""
    assert "S603" in findings(REPO / "tools"), "the rules must flag the repository's own tools, which start processes"


def test_the_unpacked_archive_loads_in_comfyui(pack, unpacked):
    """ComfyUI's loader on the installed archive: every node registered, the help pages' folder served."""
    import nodes

    before = set(nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(nodes.load_custom_node(str(unpacked), ignore=before, module_parent="custom_nodes"))
    expected = {path.stem for path in (REPO / "web" / "docs").glob("*.md")}
    assert set(nodes.NODE_CLASS_MAPPINGS) - before == expected
    assert Path(nodes.EXTENSION_WEB_DIRS[unpacked.name]) == unpacked / "web"
