"""The teacher cache: a frozen teacher's outputs over recorded augmented views, computed once and shared.

A distillation step runs the same frozen teacher over the same images every
epoch, every run and every sweep trial. With augmentation that is not the
same input twice, so a cache keyed by image alone (torchdistill's) is wrong;
this one records the augmentation: ``V`` views per image (mentor.data.views),
the teacher's outputs for each (logits, and the features a loss reads), on
disk and memory-mapped. Each epoch the student sees one recorded view per
image, rebuilt exactly, and reads the teacher's stored output for it.

- identity.py: what the outputs depend on (the key), and why a cache was not reused
- files.py: the folder's files, their sizes and memory maps
- build.py: running the teacher over every view, resumable, one builder at a time
- cache.py: ``TeacherCache``, what a training step reads
"""

from .build import TeacherCacheError, open_cache
from .cache import TeacherCache

__all__ = ["TeacherCache", "TeacherCacheError", "open_cache"]
