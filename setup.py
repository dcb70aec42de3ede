"""The package layout; everything else about the distribution is in pyproject.toml.

The studies shipped with bench have one source, the repository's top-level
``ablations/`` directory. It installs as the data-only package ``bench.studies``
(``bench/studies/*.yaml`` in the wheel), so an installed bench lists and runs them
from any directory.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["bench", "bench.*"]), "bench.studies"],
    package_dir={"bench.studies": "ablations"},
)
