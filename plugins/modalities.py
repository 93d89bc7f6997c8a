"""The built-in modality: images (uint8 pixels; crop, flip and RandAugment; image files for predict).

Registered like any third-party modality (``register_modalities``); a data
source whose ``DataInfo`` names no modality gives images.
"""

from mentor import ImageModality, hookimpl


@hookimpl
def register_modalities(register):
    register("image", ImageModality, description="images: uint8 [N, C, H, W]; crop, flip, RandAugment; "
             "image files, folders and globs for predict")
