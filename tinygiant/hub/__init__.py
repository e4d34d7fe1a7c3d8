"""Checkpoints as Hugging Face Hub repos: `assemble` builds TinyGiant from its four pretrained parts
(`from_components`), `tiny_checkpoint` from tiny random stand-ins of them (`tinygiant tiny-checkpoint`), and `publish`
writes every folder the project saves, complete and atomically (`save_checkpoint`; `SHIPPED_CODE`, the one list of the
remote code), and pushes it (`tinygiant publish`).
"""
