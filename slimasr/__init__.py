"""slimasr: make speech recognizers small and fast with distillation and structured pruning."""

__version__ = "0.1.0"
