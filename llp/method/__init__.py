"""What the trainer and the propagation tool both use: the method's propagation over fixed
embeddings (streamed vote, diffusion, ``--method auto``, ``LocalLabelPropagation``), its
local density (eq. 4), and the command-line flags, input checks and process-group helpers
of both commands."""
