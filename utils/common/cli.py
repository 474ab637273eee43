"""Strict command lines: an option is only ever the exact name it was declared with.

argparse matches a prefix of a long option by default, and on Python 3.11 even with
allow_abbrev=False it still takes a single-dash prefix for a longer single-dash option
(`ijbc_eval.py -o DIR` became `-old_net DIR`). StrictArgumentParser accepts an option string only
as declared, as `--name=value`, or as a one-letter option with its value attached (`-b128`).
"""
from __future__ import annotations

import argparse


def _matched_option_strings(parsed) -> list:
    # _parse_optional returns None, one (action, option_string, ...) tuple, or (Python >= 3.12.7)
    # a list of them
    if parsed is None:
        return []
    if isinstance(parsed, list):
        return [entry[1] for entry in parsed if entry and entry[1] is not None]
    return [parsed[1]] if parsed[1] is not None else []


def _spelled_out(argument: str, option_string: str) -> bool:
    return (argument == option_string or argument.startswith(option_string + "=")
            or (len(option_string) == 2 and option_string[1] != option_string[0]
                and argument.startswith(option_string)))


class StrictArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser that never takes an abbreviation of an option."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _parse_optional(self, arg_string):
        parsed = super()._parse_optional(arg_string)
        for option_string in _matched_option_strings(parsed):
            if not _spelled_out(arg_string, option_string):
                self.error(f"unknown option {arg_string.split('=', 1)[0]!r} (options are never "
                           f"abbreviated: did you mean {option_string!r}?)")
        return parsed
