"""``python -m llp.propagate_table``: the propagation tool's table, ``llp.propagate.table``."""
from .propagate.table import main

if __name__ == "__main__":
    main()
