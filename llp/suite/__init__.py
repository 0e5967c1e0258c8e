"""``python -m llp.suite``: LLP against its baselines on a suite of data sets of different
character (``llp.suite.datasets``), through the trainer's public command line, at several
labeled fractions and seeds; writes a Markdown table, ``results.json`` and plots."""
