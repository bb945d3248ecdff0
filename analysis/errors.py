"""The errors a user can act on. Each is shown as one line (exit 2 on the command line, a dialog in the
explorer); anything else is a bug, reported with a traceback file (harmmed_tui.tui.cli).

This module imports nothing heavy, so read-only commands can catch these without loading torch."""


class HarmmedError(Exception):
    """Base of every user-facing error: its message says what is wrong and what to do."""


class ModelLoadError(HarmmedError):
    """The model cannot be loaded: unknown id, corrupt file, missing extra, no GPU."""


class UnsupportedModelError(ModelLoadError):
    """The model loads, but its architecture has no decoder layers we know how to patch."""


class EngineCheckError(HarmmedError):
    """The patching engine's self-check failed on this model and transformers release."""


class PairsError(HarmmedError):
    """A pairs source cannot be read or tokenized as asked."""


class MetricError(HarmmedError):
    """A metric specification does not parse or does not fit the tokenizer."""


class SiteError(HarmmedError):
    """A site, layer, position, method or count choice is invalid."""


class NoRefusalsError(SiteError):
    """The model's answers give nothing to explain as asked: no treatment refused (so no refusal openings
    to learn), or no pair that flips."""


class GateError(HarmmedError):
    """A gate check cannot run as asked."""


class StoreError(HarmmedError):
    """The database or an export target cannot be used as asked."""


class ClusterError(HarmmedError):
    """A Ray cluster cannot be joined, or its workers cannot compute the run."""


class JobCancelled(HarmmedError):
    """A job was cancelled (c in the explorer, from any process) before it stored anything to resume."""
