"""Package discovery for the folder layout the design card names.

`import mentor` lives in core/ and `import mentor_plugins` in plugins/, so the
import names differ from the folder names; setuptools' `packages.find` would
install them as `core` and `plugins`. Every folder with an `__init__.py` under
each one is found here instead of listed by hand (a hand list once left out
mentor.teacher_cache, and the wheel failed at `import mentor`). Everything
else about the distribution is in pyproject.toml.
"""

from setuptools import find_packages, setup

IMPORT_NAMES = {"mentor": "core", "mentor_plugins": "plugins"}  # import name -> folder


def packages_under(name: str, folder: str) -> list[str]:
    return [name] + [f"{name}.{sub}" for sub in find_packages(folder)]


setup(
    package_dir=IMPORT_NAMES,
    packages=[pkg for name, folder in IMPORT_NAMES.items() for pkg in packages_under(name, folder)],
)
