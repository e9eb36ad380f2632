"""Pass infrastructure: pass contract, options, registry, pipelines, analyses, manager."""
