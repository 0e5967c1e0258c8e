"""The trainer, ``python -m llp.train``: settings, data, network, memory bank, the LLP
steps and the training loop, the run directory, and the plots and comparison built on it."""


def __getattr__(name):
    if name in ("main", "train", "build_parser"):  # loaded on use: importing one module of the room loads no other
        from . import command
        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
