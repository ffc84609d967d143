"""All configuration in one typed place: environment variables ``PROGEMU_*`` plus an optional TOML file.

Precedence, highest first: explicit values (e.g. CLI flags), environment
variables, the file named by ``PROGEMU_CONFIG``, then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO_MODEL = ASSETS / "demo-model"
DEMO_PRIOR = ASSETS / "demo_prior.dcm"


class Settings(BaseSettings):
    """Settings of every progemu command and service."""

    model_config = SettingsConfigDict(env_prefix="PROGEMU_", extra="forbid")

    model_path: Path = Field(DEMO_MODEL, description="ProgEmu checkpoint directory (Hugging Face format)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    engine: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="generation engine; auto takes ONNX when an export sits next to the checkpoint")
    onnx_precision: Literal["fp32", "fp16"] = Field("fp32", description="which exported graphs the ONNX engine runs")
    onnx_providers: tuple[str, ...] = Field(
        ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
        description="onnxruntime execution providers, in order of preference")
    onnx_threads: int = Field(1, ge=0, description="onnxruntime intra-op threads on the CPU (0 = its default): "
                              "small models decode faster on one thread; raise it for large models")
    max_image_pixels: int = Field(50_000_000, gt=0, description="largest prior accepted (rows x columns)")
    max_hypothesis_chars: int = Field(500, gt=0, description="longest hypothesis accepted")
    seed: int = Field(0, ge=0, description="default sampling seed")
    # Tuned for the shipped demo model (docs/model.md); ProgEmu's paper setting is CFG 3 with top-k 2048.
    cfg_scale: float = Field(1.5, ge=0.0, description="default classifier-free guidance scale (1 = off)")
    top_k: int = Field(20, ge=0, description="default top-k (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="default nucleus sampling threshold")
    temperature: float = Field(0.5, ge=0.0, description="default temperature (0 = greedy)")
    fhir_version: Literal["R5", "R4B"] = Field("R5", description="FHIR release of the output Bundle")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PROGEMU_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
