"""Interoperability with Hugging Face transformers: decoder <-> Llama, encoder <-> BERT,
encoder-decoder <-> T5 (`hf_llama`, `hf_bert`, `hf_t5`; `hf_export.FAMILIES` picks by model.arch).

Public API:
    to_hf_llama / to_hf_bert / to_hf_t5(state_dict, model_cfg) -> (PretrainedConfig, hf_state_dict)
    from_hf_llama / from_hf_bert / from_hf_t5(hf_model_or_dir) -> (ModelConfig, state_dict)
    save_hf_model(state_dict, model_cfg, out_dir, tokenizer_path, dtype)   a loadable HF directory
    export_hf(checkpoint, out_dir, dtype, data_path)                       the same from a checkpoint
    import_hf(hf_dir, dtype) -> (ModelConfig, state_dict)                  to continue pretraining
    sentencepiece_to_hf(path, model_max_length)                            our tokenizer as an HF one

transformers itself is imported only inside these functions (it takes seconds).
"""

from dist_llm.interop.hf_bert import from_hf_bert, to_hf_bert
from dist_llm.interop.hf_export import export_hf, import_hf, save_hf_model
from dist_llm.interop.hf_llama import from_hf_llama, to_hf_llama
from dist_llm.interop.hf_t5 import from_hf_t5, to_hf_t5
from dist_llm.interop.hf_tokenizer import sentencepiece_to_hf

__all__ = [
    "to_hf_llama",
    "from_hf_llama",
    "to_hf_bert",
    "from_hf_bert",
    "to_hf_t5",
    "from_hf_t5",
    "save_hf_model",
    "export_hf",
    "import_hf",
    "sentencepiece_to_hf",
]
