"""How every ``bitembed-jax`` subcommand presents its ``--help``: a description, one example, every default."""
import argparse
import textwrap


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and example keep their line breaks; each option shows its default (argparse's
    ArgumentDefaultsHelpFormatter skips options without a help text and shows empty ones)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, "", argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def add_command(subparsers, name: str, *, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` leads with ``description`` and shows ``example`` (one command line)."""
    text = "\n\n".join(textwrap.fill(p, 100) for p in description.split("\n\n"))
    return subparsers.add_parser(name, help=summary, formatter_class=HelpFormatter,
                                 description=f"{text}\n\nexample:\n  {example}")
