"""Typed view of `conf/serve/`: the values `make bento` bakes into the bento."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DockerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    base_image: str | None = None
    torch_wheel: str | None = None
    cuda_version: str | None = None  # set: the GPU variant (CUDA torch, nvidia/cuda base image)

    @model_validator(mode="after")
    def _one_torch(self) -> DockerConfig:
        if self.cuda_version and self.torch_wheel:
            raise ValueError("cuda_version (CUDA torch from PyPI) and torch_wheel (a CPU wheel) "
                             "exclude each other")
        return self


class GenerateLimits(BaseModel):
    """`/generate` bounds (causal-LM bentos)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(256, gt=0)
    max_prompt_chars: int = Field(4000, gt=0)
    max_stop: int = Field(4, ge=0)


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str
    alias: str = "champion"
    bento_name: str
    max_texts: int = Field(64, gt=0)
    max_text_chars: int = Field(2000, gt=0)
    max_request_bytes: int = Field(1_048_576, ge=1024)
    batching: bool = True
    max_batch_size: int = Field(64, gt=1)
    max_latency_ms: int = Field(10_000, gt=0)
    generate: GenerateLimits = GenerateLimits()
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    docker: DockerConfig = DockerConfig()

    def bento_args(self, model_tag: str) -> dict[str, object]:
        """The bento arguments the service reads with `bentoml.use_arguments`."""
        return {"model_tag": model_tag, "alias": self.alias, "max_texts": self.max_texts,
                "max_text_chars": self.max_text_chars,
                "max_request_bytes": self.max_request_bytes, "batching": self.batching,
                "max_batch_size": self.max_batch_size, "max_latency_ms": self.max_latency_ms,
                **self.generate.model_dump()}
