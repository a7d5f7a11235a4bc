"""Training: a job's backend, cached input, the loop, freezing, export and run folders.

Stage 4 of the pipeline (data -> audit -> train -> evaluate -> explain); see docs/architecture.md.
"""
