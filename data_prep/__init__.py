"""data_prep: turn raw corpora into tokenized Arrow shards plus a manifest.

Modules, in data-flow order:
- `default_corpus` — offline built-in corpus (stdlib docstrings + pydoc topics) as JSONL.
- `readers` — files/dirs/JSONL -> `Document(text, source_file, line)`; `ErrorPolicy` raise|skip.
- `tokenizer` — `train_sentencepiece`, `load_tokenizer` (sentencepiece .model or local HF dir).
- `workers` — ordered, worker-count-independent tokenization in a process pool.
- `writer` — `list<int32>` Arrow IPC shards and the stable train/validation split rule.
- `manifest` — `manifest.json` (written last, atomically) and `read_manifest` for the loader.
- `pipeline` — `PrepConfig` + `prepare()`; `cli` — `add_arguments` / `run` for `dist-llm prep`.

Nothing is imported here so that `data_prep.manifest` stays cheap for the training loader.
"""
