import subprocess
import sys

from instembed import __version__
from instembed.cli import COMMANDS, build_parser, main


def test_version_and_help_list_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "instembed" in text
    # every command module that exists must be listed with its help line
    listed = [name for name in COMMANDS if f"    {name}" in text]
    assert listed, text
    assert main([]) == 2  # no command: help and a usage exit code


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, instembed.cli as c; c.build_parser().format_help(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "building the CLI parser imported torch"


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out
