"""Packaging for remn.

`kernels/` holds the Triton kernels and installs as the subpackage `remn.kernels`: the
top-level import name `kernels` belongs to another project on PyPI.
"""
from setuptools import find_packages, setup

remn_packages = find_packages(include=["remn", "remn.*"])
kernel_packages = ["remn.kernels"] + [
    "remn.kernels." + sub for sub in find_packages(where="kernels")
]

setup(
    name="remn",
    version="0.1.0",
    description="REMN: robust and efficient memory network for semi-supervised video object segmentation",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=remn_packages + kernel_packages,
    package_dir={"remn": "remn", "remn.kernels": "kernels"},
    install_requires=[
        "torch>=2.1",
        "triton>=3.4; platform_system == 'Linux'",
        "numpy>=1.24",
        "Pillow>=9.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-benchmark>=4", "av>=11", "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        "video": ["av>=11"],  # `remn segment video.mp4`: PyAV decodes the file, frames stream
        # `remn export` (torch.onnx's exporter translates with onnxscript) and `--engine onnxruntime`
        "onnx": ["onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"],
        "bench": ["nvidia-ml-py>=12", "matplotlib>=3.6"],
    },
    entry_points={"console_scripts": ["remn = remn.cli:main"]},
)
