"""The backends, one file each: ``cpu.py``, ``cuda.py``, ``triton/`` (and the oracle,
``llp_kernels/reference.py``). Each file ends with its ``BACKEND`` record
(``_record.Backend``): where it runs, the ops it implements and the functions that
launch them, and its limits. ``llp_kernels._dispatch`` reads the records.
"""
