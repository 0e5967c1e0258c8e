"""``python -m llp.train`` and ``torchrun ... -m llp.train``."""
from .command import main

if __name__ == "__main__":
    main()
