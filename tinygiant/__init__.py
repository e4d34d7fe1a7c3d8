"""TinyGiant's tools: assembling, training, evaluating, exporting, serving, publishing and demonstrating the model.

Nothing here ships with a checkpoint. The remote code that does (`tinygiant.hub.publish.SHIPPED_CODE`, the one list of
it) sits at the repository root and never imports this package. The tools live in rooms by job: `eval/`, `training/`,
`export/`, `serving/`, `hub/` (assembling, publishing, tiny checkpoints) and `demo/`.
"""
