"""``backend/args.py`` of Forge 2 (dfdcbab6): ``dynamic_args``, the settings the WebUI changes at run time
rather than by command-line flag (the UI adds ``online_lora`` when its LoRA-in-low-bits setting is changed;
never set here). The command-line parser is left out."""

dynamic_args = dict(
    embedding_dir="./embeddings",
    emphasis_name="original",
)
