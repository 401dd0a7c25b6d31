"""The launcher: help, version, plugins, list, and one-line errors with exit codes."""

from __future__ import annotations

import json

from conftest import run_pixdex
from pixdex import __version__


def test_help_and_version(cli_run):
    result = cli_run("--help")
    assert result.exit_code == 0
    for command in ("plugins", "list", "config"):
        assert command in result.stdout
    assert cli_run("--version").stdout.strip() == f"pixdex, version {__version__}"


def test_plugins_json_schema(cli_run):
    result = cli_run("plugins", "--format", "json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["name"] for r in rows} >= {"pixdex_flat", "pixdex_annoy", "pixdex_simple_cnn"}
    for row in rows:
        assert set(row) == {"name", "version", "source", "module", "file", "components"}
        assert isinstance(row["components"], dict)


def test_plugins_every_format(cli_run):
    assert cli_run("plugins").stdout.splitlines()[0].split() == ["name", "version", "source", "components", "file"]
    jsonl = cli_run("plugins", "--format", "jsonl").stdout.splitlines()
    assert all(json.loads(line)["source"] == "builtin" for line in jsonl)
    csv_out = cli_run("plugins", "--format", "csv").stdout.splitlines()
    assert csv_out[0] == "name,version,source,components,file"


def test_list_with_pattern_and_bad_kind(cli_run):
    result = cli_run("list", "indexes", "--json")
    assert result.exit_code == 0
    names = [r["name"] for r in json.loads(result.stdout)]
    assert names == sorted(names)
    bad = cli_run("list", "indexs")
    assert bad.exit_code == 2 and "indexs" in bad.stderr


def test_user_error_is_one_line_in_a_real_process(tmp_path):
    proc = run_pixdex("config", "show", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2
    assert proc.stderr == f"pixdex: error: config file {tmp_path / 'missing.toml'} does not exist\n"
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_strict_plugin_failure_exits_1_in_a_real_process(tmp_path):
    from conftest import make_dist

    site = make_dist(tmp_path / "site", "pixdex-test-bad", "pixdex_test_bad", "raise ImportError('nope')\n")
    env = {"PYTHONPATH": str(site), "PIXDEX_STRICT_PLUGINS": "1"}
    proc = run_pixdex("plugins", env=env)
    assert proc.returncode == 1
    assert proc.stderr == "pixdex: error: plugin 'pixdex-test-bad' failed: import failed: ImportError: nope\n"
    relaxed = run_pixdex("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert relaxed.returncode == 0
    assert "pixdex: plugin 'pixdex-test-bad' skipped" in relaxed.stderr
    assert "pixdex_flat" in relaxed.stdout


def test_help_and_plugins_do_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from pixdex.cli import build_cli\n"
        "cli = build_cli()\n"
        "for args in (['--help'], ['plugins'], ['list', 'indexes']):\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, r.output\n"
        "names = ('torch', 'timm', 'annoy', 'matplotlib', 'numpy', 'starlette', 'uvicorn')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "print(heavy)\n"
    )
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
