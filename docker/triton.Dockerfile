# Production model server: the official Triton image (onnxruntime, tensorrt and python backends).
# Server 2.51 = container release 24.10, the same server the local nvidia-pytriton wheel embeds.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM python:3.11-slim AS export
WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator orchestrator
COPY export export
COPY avatars avatars
RUN pip install --no-cache-dir onnx numpy && \
    python -m export default-lipsync --out /models/lipsync_default/1/model.onnx

FROM ${TRITON_IMAGE}
# The python-backend TTS model needs eSpeak NG (shipped in the wheel) and a resampler.
RUN pip install --no-cache-dir espeakng-loader scipy "numpy<2"
COPY model_repository /models
COPY --from=export /models/lipsync_default/1/model.onnx /models/lipsync_default/1/model.onnx
# config.pbtxt (default) selects the onnxruntime backend; configs/local.pbtxt is for CPU dev only.
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true"]
