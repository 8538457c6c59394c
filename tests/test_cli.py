import importlib
import subprocess
import sys

from instembed import __version__
from instembed.cli import COMMANDS, build_parser, main

EXPECTED_COMMANDS = ("train", "predict", "evaluate", "tune", "export", "demo", "synth", "data")


def test_version_and_help_list_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    assert "instembed" in text
    # every command is registered and listed with its own help line (argparse wraps long help
    # lines, so compare with runs of whitespace collapsed)
    assert set(COMMANDS) == set(EXPECTED_COMMANDS)
    flat = " ".join(text.split())
    missing = []
    for name in EXPECTED_COMMANDS:
        help_line = importlib.import_module(f"instembed.commands.{COMMANDS[name]}").HELP
        assert help_line.strip(), f"command {name!r} has an empty HELP"
        if f" {name} {' '.join(help_line.split())}" not in flat:
            missing.append(name)
    assert not missing, f"commands not listed with their help line: {missing}\n{text}"
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
