"""The propagation tool, ``python -m llp.propagate``: pseudo-labels for the rows of an
embedding file from a few labeled ones, written, summarised and evaluated, and the table of
propagation methods on fixed features."""


def __getattr__(name):
    if name == "LocalLabelPropagation":  # loaded on use: the command line does not need scikit-learn
        from ..method.estimator import LocalLabelPropagation
        return LocalLabelPropagation
    if name == "main":
        from .command import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
