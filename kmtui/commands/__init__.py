"""Headless subcommands, grouped by what they act on; `kmtui.cli` wires them to argparse."""
