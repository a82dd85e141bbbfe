"""`python -m export <model> ...`: write model files for the model repository.

Each model module contributes one subcommand through `add_command(subcommands)`, which sets
`run` on its parser; this module only dispatches.
"""

from __future__ import annotations

import argparse

from . import (
    default_lipsync,
    musetalk_export,
    piper_voice,
    silero_vad,
    ultralight_export,
    wav2lip_export,
)

COMMAND_MODULES = (default_lipsync, wav2lip_export, musetalk_export, ultralight_export,
                   piper_voice, silero_vad)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="MODEL")
    for module in COMMAND_MODULES:
        module.add_command(subcommands)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
