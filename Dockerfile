# The fl-sim project image: Flower's SuperExec image with fl-sim installed (docker-compose.yml builds it).
# It runs the fl-sim ServerApp/ClientApp (as flower-superexec) and the Ray head with the attack worker.
# Everything a run needs is in the image: the code, its dependencies and the embedded assets
# (fl_sim/assets: identities, shifted users, the faces32 prior); nothing is downloaded at run time.
#
# Pinned to the project's flwr (pyproject: flwr[simulation]==1.41.0). Not the plain `1.41.0` tag: that one
# is Python 3.13 and fl-sim requires Python 3.11 (requires-python = ">=3.11,<3.12").
FROM flwr/superexec:1.41.0-py3.11-ubuntu24.04

# Where torch/torchvision come from. Default: PyTorch's CPU wheels (small, no CUDA).
# The GPU attack worker wants CUDA wheels: build with
#   docker compose build --build-arg TORCH_INDEX_URL=https://pypi.org/simple
# (PyPI's Linux torch wheels are the CUDA builds; the host needs the NVIDIA Container Toolkit).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1

# The installable project only (see .dockerignore): pyproject, the four packages, fl_sim/assets included.
COPY --chown=app:app pyproject.toml README.md /tmp/fl-sim/
COPY --chown=app:app fl_sim /tmp/fl-sim/fl_sim
COPY --chown=app:app clients /tmp/fl-sim/clients
COPY --chown=app:app server /tmp/fl-sim/server
COPY --chown=app:app attacks /tmp/fl-sim/attacks

# pip (not uv): the pins in pyproject decide; the image's flwr stays at the same 1.41.0.
RUN python -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" /tmp/fl-sim \
    && rm -rf /tmp/fl-sim \
    && python -c "import flwr, fl_sim.core.assets as a; \
assert flwr.__version__ == '1.41.0', flwr.__version__; \
missing = [p for p in ('synthfaces/users.zip', 'synthfaces/prior.zip', 'synthshift/users.zip', \
'prior-faces32/unet/diffusion_pytorch_model.safetensors') if not (a.ASSET_ROOT / p).is_file()]; \
assert not missing, f'assets not installed: {missing}'"

# The deployment's fl-sim run config (the `flwr run` command passes config-file=/app/deploy/compose.toml),
# and the run store's mount point: created here so the named volume mounted on it belongs to `app`.
COPY --chown=app:app deploy/compose.toml /app/deploy/compose.toml
RUN mkdir -p /app/runs

WORKDIR /app
ENTRYPOINT ["flower-superexec"]
