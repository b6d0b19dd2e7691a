from setuptools import find_packages, setup

setup(
    name="vidpar",
    version="0.1.0",
    description="Sequence-parallel inference for video diffusion transformers (Wan) on many GPUs",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vidpar", "vidpar.*"]),
    package_data={"vidpar": ["assets/**/*"]},
    # transformers: the UMT5 text encoder; av: mp4/PNG output; pillow: image-to-video inputs; tqdm: progress bar.
    install_requires=["torch>=2.4", "einops", "safetensors", "numpy", "transformers", "av", "pillow", "tqdm"],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "diffusers==0.42.1",
            "transformers",
            "accelerate",
            "peft",  # diffusers' LoRA loading: the reference for vidpar.lora
            "av",
            "tqdm",
            # vidpar serve's tests: the service itself, a real PostgreSQL client, HTTP and OpenAI clients
            "fastapi",
            "uvicorn",
            "python-multipart",
            "psycopg[binary]",
            "httpx",
            "openai",
        ],
        # vidpar serve: the HTTP service (multipart for the OpenAI client's uploads), PostgreSQL for replicas
        # sharing one job store, httpx for clients and the load benchmark
        "serve": ["fastapi", "uvicorn", "python-multipart", "psycopg[binary]", "httpx"],
        "video": ["av"],
        "text": ["transformers"],
        "flash": ["flash-attn"],
        "xformers": ["xformers"],
        "deepspeed": ["deepspeed"],
        "peers": ["deepspeed", "yunchang", "cache-dit"],  # cross-checks and benchmarks against other implementations
    },
    entry_points={"console_scripts": ["vidpar=vidpar.cli:main"]},
)
