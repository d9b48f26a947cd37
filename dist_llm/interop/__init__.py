"""Interoperability with Hugging Face transformers (decoder family: Llama).

Public API:
    to_hf_llama(state_dict, model_cfg) -> (LlamaConfig, hf_state_dict)
    from_hf_llama(hf_model_or_dir) -> (ModelConfig, state_dict)
    save_hf_model(state_dict, model_cfg, out_dir, tokenizer_path, dtype)   a loadable HF directory
    export_hf(checkpoint, out_dir, dtype, data_path)                       the same from a checkpoint
    import_hf(hf_dir, dtype) -> (ModelConfig, state_dict)                  to continue pretraining
    sentencepiece_to_hf(path, model_max_length)                            our tokenizer as an HF one

transformers itself is imported only inside these functions (it takes seconds).
"""

from dist_llm.interop.hf_export import export_hf, import_hf, save_hf_model
from dist_llm.interop.hf_llama import from_hf_llama, to_hf_llama
from dist_llm.interop.hf_tokenizer import sentencepiece_to_hf

__all__ = ["to_hf_llama", "from_hf_llama", "save_hf_model", "export_hf", "import_hf", "sentencepiece_to_hf"]
