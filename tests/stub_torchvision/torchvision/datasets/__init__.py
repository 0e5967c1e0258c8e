from .. import CALLS
from . import folder


class ImageFolder:
    def __init__(self, root, loader=None):
        CALLS["ImageFolder"] += 1
        self.root = root
        self.classes, self.class_to_idx = self.find_classes(root)
        self.samples = self.make_dataset(root, self.class_to_idx, None, None)
        self.loader = loader or folder.default_loader

    def find_classes(self, directory):
        raise NotImplementedError

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        raise NotImplementedError
