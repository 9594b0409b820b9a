"""Package discovery for setuptools (the metadata is in pyproject.toml).

The configs live in the repo's top-level conf/ folder and ship inside the wheel as `satlab.conf` (with one
sub-package per config group), so a non-editable install finds them (satlab.cli looks there first).
"""

from pathlib import Path

from setuptools import find_packages, setup

CONF = Path(__file__).resolve().parent / "conf"
conf_packages = ["satlab.conf", *(f"satlab.conf.{p.name}" for p in sorted(CONF.iterdir()) if p.is_dir())]

setup(
    packages=[*find_packages(include=["satlab", "satlab.*"]), *conf_packages],
    package_dir={"satlab.conf": "conf"},
    package_data={"satlab": ["py.typed"], **{name: ["*.yaml"] for name in conf_packages}},
)
