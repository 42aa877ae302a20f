"""Development tools, outside the serving package's import graph: test-checkpoint builders
(``checkpoints``) and the plain-vLLM reference runner (``reference``). The serving code reaches
the builder only through a lazy import where a default model is built on first use."""
