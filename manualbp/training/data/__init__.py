"""The lecture's data, one LightningDataModule per module (conf/data/*.yaml name them):
``xor`` (the slide's four points), ``function`` (a 1-D function to approximate), ``mnist``
(MNIST-family images; its files are handled in ``mnist_files``), ``text`` (characters of a text,
for the GPT). All serve batches from tensors
in memory (``batches``) and share the interface of ``base.LectureDataModule``."""

from manualbp.training.data.base import LectureDataModule
from manualbp.training.data.function import FunctionDataModule
from manualbp.training.data.mnist import MNISTDataModule
from manualbp.training.data.text import TextDataModule
from manualbp.training.data.xor import XORDataModule

__all__ = ["LectureDataModule", "FunctionDataModule", "MNISTDataModule", "TextDataModule", "XORDataModule"]
