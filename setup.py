"""Packages the pipeline for workers (--setup_file) and installs the label-images command."""

import setuptools

with open("requirements.txt") as f:
    REQUIREMENTS = [line.strip() for line in f if line.strip() and not line.startswith(("#", "-"))]

setuptools.setup(
    name="beam-image-labeler",
    version="0.1.0",
    description="Label images offline with EfficientNet-B3 on Apache Beam.",
    packages=setuptools.find_packages(
        include=["pipeline", "pipeline.*", "transforms", "transforms.*"]
    ),
    package_data={"transforms.models": ["data/*.txt"]},
    include_package_data=True,
    install_requires=REQUIREMENTS,
    # datetime.UTC: 3.11 at least; tests/test_runners.py keeps it equal to .python-version
    python_requires=">=3.11",
    entry_points={"console_scripts": ["label-images=pipeline.run:main"]},
)
