"""cascade: the unCLIP / DALL·E 2 recipe — a CLIP prior, a 64×64 decoder and two super-resolution stages."""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: `import cascade` stays cheap for the CLI's --help
    if name == "CascadePipeline":
        from .pipeline import CascadePipeline

        return CascadePipeline
    raise AttributeError(f"module 'cascade' has no attribute {name!r}")


__all__ = ["CascadePipeline", "__version__"]
