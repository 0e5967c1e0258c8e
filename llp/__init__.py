"""Local Label Propagation on top of the public ``llp_kernels`` API, in three rooms and a suite:

- ``llp.train``: the trainer, ``python -m llp.train`` (and its plots and comparison table);
- ``llp.propagate``: the propagation tool, ``python -m llp.propagate`` (and its table);
- ``llp.method``: what both use, the method's propagation and density written once, with
  the command-line flags, input checks and process-group helpers both commands share;
- ``llp.suite``: the development suite, ``python -m llp.suite``.

``python -m llp.report``, ``llp.compare`` and ``llp.propagate_table`` are entry points into
the rooms, under the names the README gives.
"""
