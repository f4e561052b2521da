"""largebatch: large-batch synchronous data-parallel training of image classifiers with LARS,
after You, Zhang, Hsieh, Demmel and Keutzer, "ImageNet Training in Minutes" (ICPP 2018).

``largebatch.fit(model, train_set, test_set, **settings)`` trains your own model and data with the
engine of ``largebatch train`` (imported on first use, so ``import largebatch`` stays light)."""

__version__ = "0.2.0"
__all__ = ["fit", "__version__"]


def __getattr__(name: str):
    if name == "fit":
        from largebatch.api import fit
        return fit
    raise AttributeError(f"module 'largebatch' has no attribute {name!r}")
