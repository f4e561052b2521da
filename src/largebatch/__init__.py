"""largebatch: large-batch synchronous data-parallel training of image classifiers with LARS,
after You, Zhang, Hsieh, Demmel and Keutzer, "ImageNet Training in Minutes" (ICPP 2018)."""

__version__ = "0.1.0"
