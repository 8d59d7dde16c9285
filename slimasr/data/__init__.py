"""Corpora, manifests, features, augmentation and batching.

Importing this package registers slimasr's lhotse transforms (``DownmixMono``), so manifests that
use them can be read in any process, data-loader workers included.
"""

from slimasr.data import audio as _audio  # noqa: F401  (registers DownmixMono with lhotse)
