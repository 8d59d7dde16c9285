"""slimasr: make speech recognizers small and fast with distillation and structured pruning."""

__version__ = "0.1.0"

_MODEL_API = ("load_model", "save_model", "build_model")


def __getattr__(name: str):
    # Lazy, so that `import slimasr` (and the CLI's --help) does not pay for importing torch.
    if name in _MODEL_API:
        from slimasr import models

        return getattr(models, name)
    if name == "pretrained":  # the folder of a shipped model: slimasr.pretrained("smarthome-crnn")
        from slimasr.shipped import pretrained

        return pretrained
    raise AttributeError(f"module 'slimasr' has no attribute {name!r}")
