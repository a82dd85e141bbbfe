# The asyncio orchestrator: HTTP API, WebRTC sessions, compositing. Talks to Triton over gRPC.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator orchestrator
COPY export export
COPY avatars avatars
COPY model_repository model_repository
RUN pip install --no-cache-dir . && python -m avatars build-default
EXPOSE 8010
# WebRTC media uses UDP on ephemeral ports: run with host networking, or set --ice-host to the
# address clients reach (NAT 1:1) and configure --stun/--turn.
ENTRYPOINT ["python", "-m", "orchestrator", "--host", "0.0.0.0"]
CMD ["--triton-url", "triton:8001"]
