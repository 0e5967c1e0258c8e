"""``python -m llp.report``: the trainer's plots, ``llp.train.report``."""
from .train.report import main

if __name__ == "__main__":
    main()
