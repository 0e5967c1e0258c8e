"""``python -m llp.compare``: the trainer's comparison table, ``llp.train.compare``."""
from .train.compare import main

if __name__ == "__main__":
    main()
