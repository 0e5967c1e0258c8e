"""What the command lines of ``python -m llp.train``, ``python -m llp.propagate`` and
``python -m llp.propagate_table`` share: the parser, its help format, and one definition
of each flag that more than one of them takes (its name, type, default and help).

Each ``add_*`` function takes ``add``, a parser's or an argument group's
``add_argument``; the words that differ between the commands (what the trainer or the
tool says about the flag) are its arguments, so that each command's help reads as before.
"""
from __future__ import annotations

import argparse

import llp_kernels as lk
from llp_kernels.defaults import K, T, TAU

DEVICES = ("auto", "cpu", "cuda")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once: not for flags without one, nor when the help states it."""

    def _get_help_string(self, action):
        if action.default in (None, False, "", argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``HelpFormatter`` and one-line errors."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str):
        """One line, with a hint, instead of argparse's usage block."""
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def flag_of(name: str) -> str:
    """The command-line spelling of a setting: ``bank_momentum`` -> ``--bank-momentum``."""
    return "--" + name.replace("_", "-")


def add_tau(add, of: str) -> None:
    """``--tau``: the temperature of ``s = a . b / tau`` (eq. 1-5), ``TAU`` by default;
    ``of`` names what it is the temperature of."""
    add("--tau", type=float, default=TAU, help=f"temperature of the {of}")


def add_k(add, note: str) -> None:
    """``--k``: the labeled neighbours that vote (eq. 5), ``K`` by default; ``note`` ends the help."""
    add("--k", type=int, default=K, help=f"K labeled neighbours that vote{note}")


def add_t(add, note: str = "") -> None:
    """``--t``: the unlabeled rows in a local density (eq. 4), ``T`` by default; ``note`` ends the help."""
    add("--t", type=int, default=T, help=f"T nearest unlabeled rows in the local density{note}")


def add_backend(add) -> None:
    """``--backend``: the ``llp_kernels`` backend of every kernel call, ``auto`` by default."""
    add("--backend", choices=("auto",) + lk.BACKENDS, default="auto", help="llp_kernels backend")


def add_device(add, to: str) -> None:
    """``--device``: auto (CUDA when there is one), cpu or cuda; ``to`` says what runs there."""
    add("--device", choices=list(DEVICES), default="auto", help=f"where to {to}")
