"""LightningDataModules for cvattn: Fashion-MNIST/MNIST, CIFAR-10/100, image folders; translated and cluttered
canvases; the spatial transformer paper's rotated and RTS distortions; albumentations pipelines from YAML. Batches
follow docs/design.md, "Batches"."""
from cvattn.data.base import ImageDataModule
from cvattn.data.canvas import CanvasDataset
from cvattn.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from cvattn.data.dataset import ImageDataset
from cvattn.data.distorted import DistortedFashionMNISTDataModule, DistortedMNISTDataModule
from cvattn.data.image_folder import ImageFolderDataModule
from cvattn.data.mnist import FashionMNISTDataModule, MNISTDataModule
from cvattn.data.sampler import EpochSampler, ResumableDataLoader
from cvattn.data.transforms import build_transforms

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CanvasDataset",
    "DistortedFashionMNISTDataModule",
    "DistortedMNISTDataModule",
    "EpochSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageDataset",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "ResumableDataLoader",
    "build_transforms",
]
