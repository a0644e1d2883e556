"""The training library the methods are written on, below them and above the models:
`run` (what a run has set up, its code table), `plan` (Plan, Stage, the optimizer and jit
helpers), `loop` (runs a plan's stages), `checkpointing` (resume, best, finite checks),
`evaluation` (metrics of a split, most-popular, recommendations)."""
