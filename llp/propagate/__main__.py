"""``python -m llp.propagate`` and ``torchrun ... -m llp.propagate``."""
from .command import main

if __name__ == "__main__":
    main()
