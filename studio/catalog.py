"""Models that suit one gaming GPU (or a CPU), with the facts the fit estimate needs.

Data only. Shapes are the models' published configs, so memory can be
estimated before anything is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    head_dim: int = 0  # 0: hidden // heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads


@dataclass(frozen=True)
class CatalogModel:
    name: str
    source: str  # what model.name_or_path takes: a hub id or builtin:...
    kind: str  # "base" or "instruct"
    shape: Shape
    note: str = ""


LLAMA_3_2_1B = Shape(2048, 16, 32, 8, 8192, 128256, True, 64)
LLAMA_3_2_3B = Shape(3072, 28, 24, 8, 8192, 128256, True, 128)
LLAMA_3_1_8B = Shape(4096, 32, 32, 8, 14336, 128256, False, 128)
QWEN2_5_0_5B = Shape(896, 24, 14, 2, 4864, 151936, True, 64)
QWEN2_5_1_5B = Shape(1536, 28, 12, 2, 8960, 151936, True, 128)
QWEN2_5_3B = Shape(2048, 36, 16, 2, 11008, 151936, True, 128)
QWEN2_5_7B = Shape(3584, 28, 28, 4, 18944, 152064, False, 128)
QWEN3_0_6B = Shape(1024, 28, 16, 8, 3072, 151936, True, 128)
QWEN3_1_7B = Shape(2048, 28, 16, 8, 6144, 151936, True, 128)
QWEN3_4B = Shape(2560, 36, 32, 8, 9728, 151936, True, 128)
QWEN3_8B = Shape(4096, 36, 32, 8, 12288, 151936, False, 128)
GEMMA_3_270M = Shape(640, 18, 4, 1, 2048, 262144, True, 256)
GEMMA_3_1B = Shape(1152, 26, 4, 1, 6912, 262144, True, 256)
GEMMA_3_4B = Shape(2560, 34, 8, 4, 10240, 262208, True, 256)
MISTRAL_7B = Shape(4096, 32, 32, 8, 14336, 32768, False, 128)
PHI_3_5_MINI = Shape(3072, 32, 32, 32, 8192, 32064, False, 96)
TINYLLAMA_1_1B = Shape(2048, 22, 32, 4, 5632, 32000, False, 64)

CATALOG = (
    CatalogModel("Gemma 3 270M (built in, offline)", "builtin:gemma-3-270m", "base", GEMMA_3_270M,
                 "shipped with the studio; Gemma Terms of Use"),
    CatalogModel("Gemma 3 270M Instruct", "google/gemma-3-270m-it", "instruct", GEMMA_3_270M),
    CatalogModel("Gemma 3 1B", "google/gemma-3-1b-pt", "base", GEMMA_3_1B),
    CatalogModel("Gemma 3 1B Instruct", "google/gemma-3-1b-it", "instruct", GEMMA_3_1B),
    CatalogModel("Gemma 3 4B Instruct", "google/gemma-3-4b-it", "instruct", GEMMA_3_4B),
    CatalogModel("Llama 3.2 1B", "meta-llama/Llama-3.2-1B", "base", LLAMA_3_2_1B),
    CatalogModel("Llama 3.2 1B Instruct", "meta-llama/Llama-3.2-1B-Instruct", "instruct", LLAMA_3_2_1B),
    CatalogModel("Llama 3.2 3B", "meta-llama/Llama-3.2-3B", "base", LLAMA_3_2_3B),
    CatalogModel("Llama 3.2 3B Instruct", "meta-llama/Llama-3.2-3B-Instruct", "instruct", LLAMA_3_2_3B),
    CatalogModel("Llama 3.1 8B", "meta-llama/Llama-3.1-8B", "base", LLAMA_3_1_8B),
    CatalogModel("Llama 3.1 8B Instruct", "meta-llama/Llama-3.1-8B-Instruct", "instruct", LLAMA_3_1_8B),
    CatalogModel("Qwen2.5 0.5B", "Qwen/Qwen2.5-0.5B", "base", QWEN2_5_0_5B),
    CatalogModel("Qwen2.5 0.5B Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "instruct", QWEN2_5_0_5B),
    CatalogModel("Qwen2.5 1.5B Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "instruct", QWEN2_5_1_5B),
    CatalogModel("Qwen2.5 3B Instruct", "Qwen/Qwen2.5-3B-Instruct", "instruct", QWEN2_5_3B),
    CatalogModel("Qwen2.5 7B", "Qwen/Qwen2.5-7B", "base", QWEN2_5_7B),
    CatalogModel("Qwen2.5 7B Instruct", "Qwen/Qwen2.5-7B-Instruct", "instruct", QWEN2_5_7B),
    CatalogModel("Qwen3 0.6B", "Qwen/Qwen3-0.6B", "instruct", QWEN3_0_6B, "hybrid thinking model"),
    CatalogModel("Qwen3 1.7B", "Qwen/Qwen3-1.7B", "instruct", QWEN3_1_7B, "hybrid thinking model"),
    CatalogModel("Qwen3 4B", "Qwen/Qwen3-4B", "instruct", QWEN3_4B, "hybrid thinking model"),
    CatalogModel("Qwen3 8B", "Qwen/Qwen3-8B", "instruct", QWEN3_8B, "hybrid thinking model"),
    CatalogModel("Mistral 7B v0.3", "mistralai/Mistral-7B-v0.3", "base", MISTRAL_7B),
    CatalogModel("Mistral 7B Instruct v0.3", "mistralai/Mistral-7B-Instruct-v0.3", "instruct", MISTRAL_7B),
    CatalogModel("Phi-3.5 mini Instruct", "microsoft/Phi-3.5-mini-instruct", "instruct", PHI_3_5_MINI),
    CatalogModel("TinyLlama 1.1B Chat", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "instruct", TINYLLAMA_1_1B),
)


def find(source: str) -> CatalogModel | None:
    return next((m for m in CATALOG if m.source == source), None)
