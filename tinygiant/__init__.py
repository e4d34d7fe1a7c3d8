"""TinyGiant's tools: assembling, training, evaluating, publishing and demonstrating the model.

Nothing here ships with a checkpoint. The remote code that does (`configuration_tinygiant.py`,
`modeling_tinygiant.py`, `processing_tinygiant.py`, `parsing_tinygiant.py`, `pipeline_tinygiant.py`,
`int8_tinygiant.py`) sits at the repository root and never imports this package.
"""
