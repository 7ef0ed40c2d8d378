"""Typed view of `conf/serve/`: the bento arguments (`ServeArgs`, defined once in
`bentos/runtime.py`) plus what only the build needs (names, host, image)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneship.settings import bento_runtime

ServeArgs = bento_runtime().ServeArgs


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


class ServeConfig(ServeArgs):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_name: str
    bento_name: str
    host: str = "127.0.0.1"
    port: int = Field(3000, gt=0, lt=65536)
    docker: DockerConfig = DockerConfig()

    def bento_args(self, model_tag: str) -> dict[str, object]:
        """The bento arguments the service reads with `bentoml.use_arguments`."""
        return self.model_dump(include=set(ServeArgs.model_fields)) | {"model_tag": model_tag}
