"""A stand-in for torchvision with just the API ``llp.train.torchvision_fallback`` and
``llp.train.model`` use, for testing that path on machines where the real torchvision does not
import. ``CALLS`` counts what was used."""
from collections import Counter

CALLS = Counter()

from . import datasets, models, transforms  # noqa: E402,F401
