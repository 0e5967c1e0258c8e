"""``python -m llp.compare``: the trainer's comparison table under its old name (``llp.train.compare``)."""
from .train.compare import main

if __name__ == "__main__":
    main()
