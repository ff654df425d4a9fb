"""EMcopilot: self-supervised segmentation of electron micrographs and particle size reports.

Method: Yuan et al., "Generative learning of morphological and contrast heterogeneities for
self-supervised electron micrograph segmentation". See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
