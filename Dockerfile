# One image for Dataflow GPU workers (--sdk_container_image) and the Flex Template launcher.
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/image-labeler:TAG .
# Python, Beam and every package come from requirements.txt; the CUDA runtime (cuDNN, cuBLAS,
# ...) is the one the pinned TensorFlow was built against, from its [and-cuda] extra. The
# NVIDIA driver is the host's (Dataflow: install-nvidia-driver).
ARG PYTHON_VERSION=3.11
ARG BEAM_VERSION=2.77.0

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam
FROM gcr.io/dataflow-templates-base/python311-template-launcher-base:latest AS launcher

FROM python:${PYTHON_VERSION}-slim
WORKDIR /template
COPY requirements.txt setup.py MANIFEST.in ./
COPY pipeline pipeline
COPY transforms transforms
RUN pip install --no-cache-dir -r requirements.txt \
        "tensorflow[and-cuda]==$(sed -n 's/^tensorflow==//p' requirements.txt)" \
    && pip install --no-cache-dir --no-deps . \
    && pip check

# Beam's worker entrypoint, from the SDK image of the same Beam version.
COPY --from=beam /opt/apache/beam /opt/apache/beam
# The Flex Template launcher runs pipeline/run.py with the template's parameters.
COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/pipeline/run.py

ENTRYPOINT ["/opt/apache/beam/boot"]
